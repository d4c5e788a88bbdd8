"""The fleet's devices: enrollment, certificates and their renewal and revocation, labels,
and the policy each device is sent.
"""

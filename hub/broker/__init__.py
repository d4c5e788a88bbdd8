"""The broker: the managed Mosquitto (its configuration, supervisor and open-file limits)
and what an external broker needs to carry the fleet.
"""

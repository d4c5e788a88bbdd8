"""Who may use the web API: API tokens and the rate limits per caller."""

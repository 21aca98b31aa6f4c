"""Detoxification methods: DINM and the baselines, one module each, chosen by registry key."""

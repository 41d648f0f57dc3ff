"""HelixTrain executor: applies plans with torch (Ulysses SP, token-level PP, DP)."""

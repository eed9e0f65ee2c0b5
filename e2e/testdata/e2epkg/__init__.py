"""Calculator factories for aserpc's end-to-end tests (importable as e2epkg.calcs)."""

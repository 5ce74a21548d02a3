"""What dpo.py, kto.py and simpo.py share: config parsing, loading, merging, plotting and the demo assets."""

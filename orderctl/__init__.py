"""orderctl: run, seed, drive and inspect Orderflow from the command line."""

"""`bufbroker bench`: bufbroker measured side by side with its alternatives.

Every result is a ratio to a baseline measured in the same run (A and B
alternate sample by sample), because the machines we run on are shared and
noisy. See bench/runner.py for the entry point and the JSON form.
"""

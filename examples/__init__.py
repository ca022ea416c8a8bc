"""Runnable examples of bufbroker (`bufbroker example NAME`)."""

"""What the broker tells about itself: metrics, activity, latency, introspection."""

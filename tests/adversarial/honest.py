"""The honest client the adversarial tests measure beside an attack, as a script for its own process."""

# Attaches and maps its own buffer in a loop until stdin closes; prints its waits' longest, p99, median and count.
HONEST_IMPORTER = """
import json, sys, threading, time
import bufbroker
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with bufbroker.connect(sys.argv[1]) as exporter, bufbroker.connect(sys.argv[1]) as importer:
    buffer = exporter.export(1 << 20, name="honest", offers=["segments", "memfd"])
    attachment = importer.attach("honest", accept=["segments"], map=True)  # warm: call channel open
    attachment.mapping.close()
    attachment.detach()
    print("ready", flush=True)
    waits = []
    while not stop.is_set():
        started = time.perf_counter()
        attachment = importer.attach("honest", accept=["segments"], map=True)
        waits.append(time.perf_counter() - started)
        attachment.mapping.close()
        attachment.detach()
        time.sleep(0.005)
    buffer.unregister()
waits.sort()
print(json.dumps({"longest": waits[-1], "p99": waits[len(waits) * 99 // 100], "median": waits[len(waits) // 2],
                  "count": len(waits)}), flush=True)
"""

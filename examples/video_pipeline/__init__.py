"""A video pipeline on bufbroker streams: decoder -> analyser -> encoder, three separate commands.

The decoder (PyAV) decodes a generated test video into the stream
``decoded`` (a pool of slot buffers); the analyser and the encoder read
each frame in place through their own mappings; the analyser publishes
what it read on the stream ``analysed``, which the encoder pairs with each
frame. The stages are unrelated processes (``python -m
examples.video_pipeline.decoder SOCKET_DIR ...``) that share only the
broker's socket dir and find each other by stream name; the decoder's
slots carry the (format, modifier) pair of what PyAV decodes to, and the
consumers accept the pairs they read (the broker negotiates, see the
README); only frame
messages travel between them, on the links the broker set up. Halfway the
video changes resolution and the decoder moves its stream to the new
layout (``stream.move``). ``bufbroker example video`` runs it, then the
same pipeline with frames copied through pipes, and prints a report.

Modules, one job each:

    pattern   the test picture and its frame-number barcode
    h264      raw H.264 in and out with PyAV
    source    the generated source video
    handoff   stream names, frame meta and results shared by the stages
    reader    a consumer's frames: bytes, layout, what stays mapped
    meter     what a process exchanged with the broker and on the links
    decoder, analyser, encoder   the three stage commands
    piped     the comparison run, frames copied through pipes
    run       starting the processes of either run
    checks    what a correct run looks like
    report    the printed report
    example   `bufbroker example video`
"""

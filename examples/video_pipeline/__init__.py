"""A video pipeline on bufbroker: decoder -> analyser -> encoder, three processes.

The decoder (PyAV) decodes a generated test video into a pool of
bufbroker buffers; the analyser and the encoder read the frames in place
through their own mappings; only slot numbers travel between them. Halfway
the stream changes resolution and the decoder moves its buffers to the
new layout. ``bufbroker example video`` runs it, then the same pipeline
with frames copied through pipes, and prints a report.

Modules, one job each:

    pattern   the test picture and its frame-number barcode
    h264      raw H.264 in and out with PyAV
    source    the generated source video
    handoff   the slot-number messages between the processes
    pool      the decoder's free/in-use slots
    reader    a consumer's attachments, re-maps and layouts
    meter     what a process exchanged with the broker
    decoder, analyser, encoder   the three processes
    piped     the comparison run, frames copied through pipes
    run       starting the processes of either run
    checks    what a correct run looks like
    report    the printed report
    example   `bufbroker example video`
"""

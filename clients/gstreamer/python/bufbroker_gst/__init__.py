"""Shared parts of the bufbrokersink and bufbrokersrc GStreamer elements.

The elements themselves are ``../bufbrokersink.py`` and ``../bufbrokersrc.py``:
GStreamer's Python plugin loader imports every ``*.py`` file in a
``python/`` folder of ``GST_PLUGIN_PATH`` as a plugin. This package is a
folder, so the loader leaves it alone, and the elements import it.

- ``sdk``: makes ``import bufbroker`` work under the loader's Python.
- ``caps``: GStreamer caps <-> bufbroker layouts, through ``bufbroker.formats``.
- ``framemeta``: the frame metadata the sink writes (PTS, duration, framerate).
- ``slotpool``: the GstBufferPool whose release tells bufbrokersrc that downstream freed a frame.
"""

"""Host probing: the only code that reads /proc, /sys and /dev (udmabuf, dma-heaps, PCI, fds)."""

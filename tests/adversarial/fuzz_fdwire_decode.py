"""atheris target: bufbroker.fdwire.decode must raise FdWireError or return a message.

Run by test_fdwire_decoder_fuzz.py for a bounded number of runs; by hand:

    python tests/adversarial/fuzz_fdwire_decode.py -runs=100000 -max_len=5000
"""

import sys

import atheris

with atheris.instrument_imports():
    from bufbroker import fdwire


def test_one_input(data: bytes) -> None:
    try:
        message = fdwire.decode(data)
    except fdwire.FdWireError:
        return
    assert message.WhichOneof("kind") is not None
    fdwire.encode(message)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

#!/usr/bin/env python3
"""Starts the test suite's Apache Kafka broker by hand (a fresh single-node KRaft
broker in a temporary folder), prints its bootstrap address and keeps it running
until Ctrl-C or SIGTERM: for `weir bench --brokers`, `weir run` or a look at a
failing test. Run it with the test venv's Python after integration/setup.sh:

    ~/.cache/weir-venv/bin/python integration/kafka-broker.py
"""

import pathlib
import signal
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import start_kafka, stop_kafka  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="weir-kafka-") as workdir:
        broker = start_kafka(pathlib.Path(workdir))
        print(broker.bootstrap, flush=True)
        print(f"log: {broker.log}", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            broker.proc.wait()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            stop_kafka(broker)


if __name__ == "__main__":
    main()

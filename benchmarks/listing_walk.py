"""The bare reference for a no-op ``immsync apply``: the listing walk and nothing else.

``python benchmarks/listing_walk.py --workers 8 /SDY1 [/SDY2 ...]``

Signs in and lists every folder below each root with immsync's own ``ImmportClient``
(the same ``requests`` session set-up as the command line, the same concurrency),
which is the least a sync must do to learn that nothing changed upstream. Credentials
and URLs come from the same environment variables the command line reads.
"""

from __future__ import annotations

import argparse
import os
import sys

from immsync import __version__
from immsync.immport import Credentials, ImmportClient
from immsync.immport.wire import api_session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("roots", nargs="+")
    options = parser.parse_args()
    client = ImmportClient(
        api_session(f"immsync/{__version__}"),
        token_url=os.environ["IMMPORT_TOKEN_URL"],
        data_url=os.environ["IMMPORT_DATA_API_BASE_URL"],
        query_url=None,
        credentials=Credentials(
            username=os.environ["IMMPORT_USERNAME"], password=os.environ["IMMPORT_PASSWORD"]
        ),
    )
    files = sum(len(client.walk(root, workers=options.workers)) for root in options.roots)
    print(f"{files} files listed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

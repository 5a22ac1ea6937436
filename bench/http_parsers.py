"""Parse the same HTTP/1.1 requests with h11 and with httptools, N times each, and print the
microseconds per request (best of 3): the measurement behind gnetserver.http's parser choice
(bench/README.md, "HTTP parser").

    python bench/http_parsers.py [--requests 50000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import h11
import httptools

GET = (b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1\r\n"
       b"Accept: */*\r\n\r\n")
BROWSER = (b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.com\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
           b"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\n"
           b"Referer: https://www.example.com/\r\nConnection: keep-alive\r\n"
           b"Cookie: session=0123456789abcdef; theme=dark\r\nSec-Fetch-Dest: script\r\n"
           b"Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\nPragma: no-cache\r\n"
           b"Cache-Control: no-cache\r\n\r\n")
POST = (b"POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/x-www-form-"
        b"urlencoded\r\nContent-Length: 27\r\n\r\nname=alice&city=paris&n=42")


def h11_parse(data: bytes) -> None:
    """A new h11 connection per request: the request, its body, its end."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            return


class _Sink:
    """httptools callbacks collecting what a server needs."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.body: list[bytes] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def httptools_parse(data: bytes) -> None:
    """A new httptools parser per request, collecting URL, headers and body."""
    sink = _Sink()
    parser = httptools.HttpRequestParser(sink)
    parser.feed_data(data)
    parser.get_method()
    parser.should_keep_alive()


def measure(parse: Callable[[bytes], None], data: bytes, count: int) -> float:
    """Best of 3 runs, microseconds per request."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            parse(data)
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50000)
    args = parser.parse_args()
    print(f"h11 {h11.__version__}, httptools {httptools.__version__}, "
          f"{args.requests} parses, best of 3 (µs per request)")
    print("| request | h11 | httptools | ratio |")
    print("|---|---|---|---|")
    for name, data in (("88-byte GET", GET), ("browser GET, 13 headers", BROWSER),
                       ("POST, 27-byte body", POST)):
        slow, fast = measure(h11_parse, data, args.requests), measure(httptools_parse, data,
                                                                      args.requests)
        print(f"| {name} ({len(data)} B) | {slow:.1f} | {fast:.1f} | {slow / fast:.0f}x |")


if __name__ == "__main__":
    main()

# The request loop of the tests/mpy servers (MicroPython): one JSON request a
# line on stdin, one JSON reply a line on stdout, until stdin ends. The reply
# is what `handle` returns; an exception becomes {"exception": "Type: text"},
# which tests/conftest.py's MicroPython turns into a failed test, with the
# traceback on stderr. A request with "expect_error" set gets it as
# {"error": ...} instead, for tests that want to see the firmware refuse.
import json
import sys


def serve(handle):
    # handle(req) -> reply dict; a dict of op name -> handler is looked up by
    # the request's "op".
    if isinstance(handle, dict):
        handle = by_op(handle)
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        req = None
        try:
            req = json.loads(line)
            r = handle(req)
        except Exception as e:
            expected = isinstance(req, dict) and req.get("expect_error")
            if not expected:
                sys.print_exception(e, sys.stderr)
            r = {"error" if expected else "exception": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(r))
        sys.stdout.write("\n")
        sys.stdout.flush()


def by_op(ops):
    def handle(req):
        op = ops.get(req["op"])
        if op is None:
            return {"exception": "unknown op " + req["op"]}
        return op(req)

    return handle

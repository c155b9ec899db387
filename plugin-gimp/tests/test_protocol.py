"""The plug-in's protocol code against the golden vectors (protocol/vectors) and a live-free
round trip. Standard library unittest: python3 -m unittest discover -s plugin-gimp/tests"""
import glob
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "plugin-gimp", "neural-style"))

import ns_protocol as proto  # noqa: E402

VECTORS = os.path.join(ROOT, "protocol", "vectors")


def vectors():
    for js in sorted(glob.glob(os.path.join(VECTORS, "*.json"))):
        name = os.path.splitext(os.path.basename(js))[0]
        with open(js) as f:
            doc = json.load(f)
        with open(os.path.join(VECTORS, name + ".bin"), "rb") as f:
            data = f.read()
        yield name, doc, data


class GoldenVectors(unittest.TestCase):
    def test_there_are_vectors(self):
        names = [n for n, _, _ in vectors()]
        self.assertGreaterEqual(len([n for n in names if n.startswith("request_")]), 5)
        self.assertGreaterEqual(len([n for n in names if n.startswith("event_")]), 8)
        self.assertGreaterEqual(len([n for n in names if n.startswith("invalid_")]), 6)

    def test_valid_vectors_decode_and_reencode(self):
        for name, doc, data in vectors():
            if not doc["valid"]:
                continue
            with self.subTest(name):
                header, payload, used = proto.decode(data)
                self.assertEqual(used, len(data))
                self.assertEqual(header, doc["header"])
                self.assertEqual(payload.hex(), doc["payload_hex"])
                # our encoder produces the same bytes from the decoded header
                self.assertEqual(proto.encode_frame(header, payload), data)
                if doc["direction"] == "request":
                    proto.check_request(header)
                else:
                    self.assertIn(header["type"], proto.KNOWN_EVENTS)
                for key in ("content", "image", "preview"):
                    ref = header.get(key)
                    if isinstance(ref, dict):
                        self.assertEqual(len(proto.slice_image(ref, payload)), ref["length"])

    def test_invalid_vectors_are_rejected_with_the_right_kind(self):
        for name, doc, data in vectors():
            if doc["valid"]:
                continue
            with self.subTest(name):
                with self.assertRaises(proto.ProtocolError) as cm:
                    header, _, _ = proto.decode(data)
                    proto.check_request(header)
                self.assertEqual(cm.exception.kind, doc["error"])


class Framing(unittest.TestCase):
    def test_round_trip_and_truncation(self):
        data = proto.encode_frame({"type": "status"}, b"xyz")
        header, payload, used = proto.decode(data)
        self.assertEqual((header, payload, used), ({"type": "status"}, b"xyz", len(data)))
        for cut in range(1, len(data)):
            with self.assertRaises(proto.ProtocolError) as cm:
                proto.decode(data[:cut])
            self.assertEqual(cm.exception.kind, "truncated")

    def test_socket_rule(self):
        env = dict(os.environ)
        try:
            os.environ["NEURAL_STYLE_SOCKET"] = "/x/y.sock"
            self.assertEqual(proto.socket_path(), "/x/y.sock")
            self.assertEqual(proto.socket_path("/explicit"), "/explicit")
            del os.environ["NEURAL_STYLE_SOCKET"]
            os.environ["XDG_RUNTIME_DIR"] = "/run/user/7"
            self.assertEqual(proto.socket_path(), "/run/user/7/neural-style/daemon.sock")
            del os.environ["XDG_RUNTIME_DIR"]
            self.assertTrue(proto.socket_path().endswith("neural-style-%d/daemon.sock" % os.getuid()))
        finally:
            os.environ.clear()
            os.environ.update(env)

    def test_no_daemon_is_a_clear_error(self):
        with self.assertRaises(proto.NoDaemon) as cm:
            proto.Connection("/nonexistent/dir/daemon.sock")
        self.assertIn("/nonexistent/dir/daemon.sock", str(cm.exception))


if __name__ == "__main__":
    unittest.main()

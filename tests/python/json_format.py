"""Google's own proto3 JSON mapping, for comparing with Trellis's.

Usage: json_format.py DESCRIPTOR_SET MESSAGE_NAME < JSON

Parses the JSON on stdin into MESSAGE_NAME (from the encoded
FileDescriptorSet at DESCRIPTOR_SET) with `json_format.Parse`, rejecting
unknown fields, and prints `json_format.MessageToJson` of the result on one
line. Exits 1 with the parser's message when the JSON does not fit.
"""

import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def message_class(pool, name):
    descriptor = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def main():
    path, name = sys.argv[1], sys.argv[2]
    files = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    message = message_class(pool, name)()
    try:
        json_format.Parse(sys.stdin.read(), message, descriptor_pool=pool)
    except json_format.ParseError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    out = json_format.MessageToJson(message, descriptor_pool=pool)
    print(json.dumps(json.loads(out), separators=(",", ":")))


if __name__ == "__main__":
    main()

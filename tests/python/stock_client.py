"""A stock Python gRPC client of the daemon, as a user's first one would be: grpcio with no
channel options (no grpc.default_authority), stubs generated from proto/ by grpcio-tools.

usage: stock_client.py STUBS_DIR TARGET ACTOR
  STUBS_DIR  where `python -m grpc_tools.protoc` wrote actseal/v1/actseal_pb2*.py
  TARGET     a grpcio target: unix:/path/to/actseal.sock or 127.0.0.1:PORT

Prints one JSON object per line: {"call": ..., "code": ..., "details": ...}. The good calls
(health, CreateKey, Sign) come first, then hand-made malformed Sign requests sent as raw bytes.
"""

import json
import sys

import grpc

sys.path.insert(0, sys.argv[1])
from actseal.v1 import actseal_pb2, actseal_pb2_grpc  # noqa: E402

TARGET, ACTOR = sys.argv[2], sys.argv[3]


def report(call, fn):
    try:
        result = fn()
        print(json.dumps({"call": call, "code": "OK", "details": result}), flush=True)
    except grpc.RpcError as e:
        print(json.dumps({"call": call, "code": e.code().name, "details": e.details()}),
              flush=True)


def raw_sign(channel, payload):
    """Sign with the request body given as bytes, exactly as they go on the wire."""
    call = channel.unary_unary("/actseal.v1.Signer/Sign",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    return lambda: len(call(payload, timeout=10))


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, wire_type, body):
    return varint(number << 3 | wire_type) + body


def length_delimited(number, data):
    return field(number, 2, varint(len(data)) + data)


def main():
    with grpc.insecure_channel(TARGET) as channel:
        health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                     request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
        report("health", lambda: health(b"", timeout=10).hex())
        admin = actseal_pb2_grpc.KeyAdminStub(channel)
        report("create_key", lambda: admin.CreateKey(
            actseal_pb2.CreateKeyRequest(actor=ACTOR), timeout=10).key_id)
        signer = actseal_pb2_grpc.SignerStub(channel)
        good = actseal_pb2.SignRequest(actor=ACTOR, action_type="payment.initiate",
                                       target="acct:1", document=b'{"amount":"10.00"}')
        report("sign", lambda: signer.Sign(good, timeout=10).log_index)
        report("checkpoint", lambda: signer.GetCheckpoint(
            actseal_pb2.GetCheckpointRequest(), timeout=10).size)

        encoded = good.SerializeToString()
        bad_utf8 = (length_delimited(1, ACTOR.encode()) +
                    length_delimited(2, b"payment.\xff\xfe") +
                    length_delimited(3, b"acct:1") + length_delimited(4, b"{}"))
        report("invalid_utf8_action_type", raw_sign(channel, bad_utf8))
        report("invalid_utf8_context", raw_sign(
            channel, encoded + length_delimited(6, length_delimited(1, b"k") +
                                                length_delimited(2, b"\xc3\x28"))))
        report("truncated", raw_sign(channel, encoded[:-5]))
        report("length_past_end", raw_sign(channel, field(1, 2, varint(1000)) + b"abc"))
        report("bad_varint", raw_sign(channel, encoded + field(2, 0, b"\xff" * 11)))
        report("wire_type_7", raw_sign(channel, encoded + bytes([0x0F])))
        report("field_zero", raw_sign(channel, b"\x02\x00" + encoded))
        report("bad_utf8_oneof_label", (lambda call: lambda: len(call(
            length_delimited(1, ACTOR.encode()) + length_delimited(2, b"\x80"), timeout=10)))(
            channel.unary_unary("/actseal.v1.KeyAdmin/AdoptKey",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)))
        report("sign_after", lambda: signer.Sign(good, timeout=10).log_index)


if __name__ == "__main__":
    main()

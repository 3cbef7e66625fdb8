#!/usr/bin/env python3
"""Checks an asyncspade controller's gRPC Generation API from Python.

    python3 tests/integration/python/grpc_client_check.py --endpoint 127.0.0.1:50051

Generates Python stubs from the repository's proto/ (and the standard grpc.health.v1 proto) into a
temporary directory with grpcio-tools, then checks: grpc.health.v1 Check (SERVING), GetModelInfo,
a streamed Generate (chunks, then exactly one final message with usage), Abort of a long request
in flight (found, and the stream ends ABORTED), Abort of an unknown id (not found), and a bad
request refused with INVALID_ARGUMENT. Prints one line per check; exits 1 with the reason on the
first failure, 2 when grpcio / grpcio-tools are missing (pip install grpcio grpcio-tools).
"""
import argparse
import os
import pathlib
import queue
import sys
import tempfile
import threading

# grpc.health.v1 as published by gRPC; written out here so no grpcio-health-checking is needed.
HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"""

GENERATION_PROTO = "asyncspade/serving/v1/generation.proto"
HEALTH_MODULE_DIR = "asyncspade_check_health"


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import grpc_tools

    # The file path decides the Python module; `grpc/health/v1/` would be shadowed by the installed
    # grpc package, so the file lives elsewhere (its proto package, hence the service name on the
    # wire, stays grpc.health.v1).
    health_dir = pathlib.Path(out_dir, "protos", HEALTH_MODULE_DIR)
    health_dir.mkdir(parents=True)
    (health_dir / "health.proto").write_text(HEALTH_PROTO)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for proto, include in ((GENERATION_PROTO, proto_dir), (f"{HEALTH_MODULE_DIR}/health.proto",
                                                           os.path.join(out_dir, "protos"))):
        code = protoc.main(["grpc_tools.protoc", f"-I{include}", f"-I{well_known}", f"--python_out={out_dir}",
                            f"--grpc_python_out={out_dir}", os.path.join(include, proto)])
        check(code == 0, f"protoc failed ({code}) on {proto} (include dir {include})")
    sys.path.insert(0, out_dir)


def check_health(grpc, health_pb2, health_grpc, channel, timeout):
    stub = health_grpc.HealthStub(channel)
    for service in ("", "asyncspade.serving.v1.GenerationService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        check(response.status == health_pb2.HealthCheckResponse.SERVING,
              f"health Check(service={service!r}) is {status}, expected SERVING")
    print("ok: grpc.health.v1 Check: SERVING")


def check_model_info(pb, stub, timeout):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout)
    check(info.name, "GetModelInfo: empty name")
    check(info.vocab_size > 0, f"GetModelInfo: vocab_size is {info.vocab_size}")
    check(info.num_layers > 0, f"GetModelInfo: num_layers is {info.num_layers}")
    check(info.max_seq_len > 0, f"GetModelInfo: max_seq_len is {info.max_seq_len}")
    print(f"ok: GetModelInfo: {info.name} ({info.architecture}), {info.num_layers} layers, "
          f"default policy {pb.SparsePolicy.Name(info.default_policy)}")
    return info


def check_generate(pb, stub, args):
    request = pb.GenerateRequest(text=args.prompt)
    request.stop.max_tokens = args.max_tokens
    request.sampling.temperature = 0.0
    text, token_ids, finals, request_ids = "", [], [], set()
    for response in stub.Generate(request, timeout=args.timeout):
        check(not finals, "Generate: a message after the final one")
        request_ids.add(response.request_id)
        event = response.WhichOneof("event")
        if event == "chunk":
            text += response.chunk.text
            token_ids.extend(response.chunk.token_ids)
        elif event == "final":
            finals.append(response.final)
        else:
            raise CheckFailed(f"Generate: a response with no event: {response}")
    check(len(finals) == 1, f"Generate: {len(finals)} final messages, expected 1")
    check(len(request_ids) == 1 and "" not in request_ids, f"Generate: request ids {request_ids}")
    final = finals[0]
    reason = pb.FinishReason.Name(final.finish_reason)
    check(final.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP, pb.FINISH_REASON_STOP_STRING),
          f"Generate: finish reason {reason} ({final.error_message})")
    check(text, "Generate: no text streamed")
    check(final.usage.prompt_tokens > 0, f"Generate: usage.prompt_tokens is {final.usage.prompt_tokens}")
    check(final.usage.completion_tokens == len(token_ids),
          f"Generate: usage.completion_tokens {final.usage.completion_tokens} != {len(token_ids)} streamed ids")
    check(0 < final.usage.completion_tokens <= args.max_tokens,
          f"Generate: {final.usage.completion_tokens} tokens for max_tokens={args.max_tokens}")
    print(f"ok: Generate: {final.usage.completion_tokens} tokens, {reason}, served by {final.served_by or '?'}, "
          f"text={text[:40]!r}")


def check_abort(pb, stub, args):
    request = pb.GenerateRequest(text=args.prompt)
    request.stop.max_tokens = args.abort_max_tokens
    request.stop.ignore_eos = True  # keep generating until aborted
    responses = queue.Queue()

    def consume():
        try:
            for response in stub.Generate(request, timeout=args.timeout):
                responses.put(response)
            responses.put(None)
        except Exception as error:  # surfaced to the main thread
            responses.put(error)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    first = responses.get(timeout=args.timeout)
    if isinstance(first, Exception):
        raise CheckFailed(f"Abort: the long Generate failed: {first}")
    check(first is not None and first.WhichOneof("event") == "chunk",
          f"Abort: expected a first chunk of the long request, got {first}")
    found = stub.Abort(pb.AbortRequest(request_id=first.request_id), timeout=args.timeout).found
    check(found, f"Abort: request {first.request_id} was not found while in flight")
    final = None
    while True:
        item = responses.get(timeout=args.timeout)
        if item is None:
            break
        if isinstance(item, Exception):
            raise CheckFailed(f"Abort: the aborted stream ended with an error instead of a final message: {item}")
        if item.WhichOneof("event") == "final":
            final = item.final
    thread.join(timeout=args.timeout)
    check(final is not None, "Abort: the aborted stream ended without a final message")
    check(final.finish_reason == pb.FINISH_REASON_ABORTED,
          f"Abort: final finish reason is {pb.FinishReason.Name(final.finish_reason)}, expected ABORTED")
    unknown = stub.Abort(pb.AbortRequest(request_id="no-such-request-42"), timeout=args.timeout).found
    check(not unknown, "Abort: an unknown request id was reported found")
    print(f"ok: Abort: {first.request_id} aborted after {final.usage.completion_tokens} tokens; unknown id not found")


def check_bad_request(grpc, pb, stub, args):
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[]))
    try:
        for _ in stub.Generate(request, timeout=args.timeout):
            pass
    except grpc.RpcError as error:
        check(error.code() == grpc.StatusCode.INVALID_ARGUMENT,
              f"bad request: status {error.code()}, expected INVALID_ARGUMENT ({error.details()})")
        print(f"ok: bad request refused: INVALID_ARGUMENT {error.details()!r}")
        return
    raise CheckFailed("bad request: an empty token-id prompt was accepted")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="the controller's gRPC address, HOST:PORT")
    default_proto_dir = pathlib.Path(__file__).resolve().parents[3] / "proto"
    parser.add_argument("--proto-dir", default=str(default_proto_dir), help=f"default: {default_proto_dir}")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--abort-max-tokens", type=int, default=100000,
                        help="max_tokens of the request that is aborted mid-way")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    args = parser.parse_args()

    try:
        import grpc
        import grpc_tools  # noqa: F401
    except ImportError as error:
        print(f"grpc_client_check: {error.name} is not installed: pip install grpcio grpcio-tools", file=sys.stderr)
        return 2
    check_path = pathlib.Path(args.proto_dir, GENERATION_PROTO)
    if not check_path.is_file():
        print(f"grpc_client_check: {check_path} not found; pass --proto-dir (the repository's proto/)", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="asyncspade-grpc-stubs-") as stub_dir:
        try:
            generate_stubs(args.proto_dir, stub_dir)
            from asyncspade.serving.v1 import generation_pb2 as pb
            from asyncspade.serving.v1 import generation_pb2_grpc as pb_grpc
            from asyncspade_check_health import health_pb2, health_pb2_grpc
        except CheckFailed as failure:
            print(f"grpc_client_check: FAILED: {failure}", file=sys.stderr)
            return 1
        except ImportError as error:
            print(f"grpc_client_check: FAILED: generated stubs do not import: {error}", file=sys.stderr)
            return 1

        channel = grpc.insecure_channel(args.endpoint)
        try:
            grpc.channel_ready_future(channel).result(timeout=min(args.timeout, 30))
        except grpc.FutureTimeoutError:
            print(f"grpc_client_check: FAILED: cannot connect to {args.endpoint}", file=sys.stderr)
            return 1
        stub = pb_grpc.GenerationServiceStub(channel)
        try:
            check_health(grpc, health_pb2, health_pb2_grpc, channel, args.timeout)
            check_model_info(pb, stub, args.timeout)
            check_generate(pb, stub, args)
            check_abort(pb, stub, args)
            check_bad_request(grpc, pb, stub, args)
        except CheckFailed as failure:
            print(f"grpc_client_check: FAILED: {failure}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(f"grpc_client_check: FAILED: RPC error {error.code()}: {error.details()}", file=sys.stderr)
            return 1
        except queue.Empty:
            print(f"grpc_client_check: FAILED: no answer within {args.timeout} s", file=sys.stderr)
            return 1
        finally:
            channel.close()
    print("grpc_client_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

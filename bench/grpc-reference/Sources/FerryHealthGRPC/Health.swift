// ferry.v1.Health (proto/ferry/v1/health.proto) for grpc-swift-2, with the service glue written by hand
// in the shape protoc-gen-grpc-swift-2 generates, so that the reference pays what a
// generated grpc-swift-2 service pays: binary protobuf messages, one handler through RPCRouter.

public import GRPCCore
internal import GRPCProtobuf

// The messages are the ones Ferry generates from proto/ferry/v1/health.proto
// (HealthMessages.swift links Sources/FerryProtocol/Generated/health.pb.swift).

/// `ferry.v1.Health` and its one method.
public enum FerryHealth {
    public static let service = GRPCCore.ServiceDescriptor(fullyQualifiedService: "ferry.v1.Health")
    public static let check = GRPCCore.MethodDescriptor(service: service, method: "Check")
}

/// The server side: Health/Check always answers SERVING (the registration generated code makes
/// for a `SimpleServiceProtocol`: unary request in, unary response out).
public struct FerryHealthService: GRPCCore.RegistrableRPCService {
    public init() {}

    public func registerMethods<Transport: GRPCCore.ServerTransport>(with router: inout GRPCCore.RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: FerryHealth.check,
            deserializer: GRPCProtobuf.ProtobufDeserializer<HealthCheckRequest>(),
            serializer: GRPCProtobuf.ProtobufSerializer<HealthCheckResponse>(),
            handler: { request, context in
                let single = try await GRPCCore.ServerRequest(stream: request)
                let response = try await self.check(request: single.message, context: context)
                return GRPCCore.StreamingServerResponse(single: GRPCCore.ServerResponse(message: response, metadata: [:]))
            })
    }

    public func check(request: HealthCheckRequest, context: GRPCCore.ServerContext) async throws -> HealthCheckResponse {
        var response = HealthCheckResponse()
        response.status = .serving
        return response
    }
}

/// The client side: one unary Health/Check on a `GRPCClient`.
extension GRPCCore.GRPCClient {
    public func ferryHealthCheck(options: GRPCCore.CallOptions = .defaults) async throws -> HealthCheckResponse {
        try await self.unary(
            request: GRPCCore.ClientRequest(message: HealthCheckRequest()),
            descriptor: FerryHealth.check,
            serializer: GRPCProtobuf.ProtobufSerializer<HealthCheckRequest>(),
            deserializer: GRPCProtobuf.ProtobufDeserializer<HealthCheckResponse>(),
            options: options,
            onResponse: { response in try response.message })
    }
}

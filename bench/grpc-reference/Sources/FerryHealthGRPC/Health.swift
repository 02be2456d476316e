// ferry.v1.Health (proto/ferry/v1/health.proto) for grpc-swift-2, written by hand in the shape
// protoc-gen-swift and protoc-gen-grpc-swift-2 generate, so that the reference pays what a
// generated grpc-swift-2 service pays: binary protobuf messages, one handler through RPCRouter.

public import GRPCCore
internal import GRPCProtobuf
public import SwiftProtobuf

// MARK: - Messages

/// Whether a server is serving.
public enum Ferry_V1_ServingStatus: SwiftProtobuf.Enum, Swift.CaseIterable {
    public typealias RawValue = Int
    case unspecified  // = 0
    case serving  // = 1
    case notServing  // = 2
    case UNRECOGNIZED(Int)

    public init() { self = .unspecified }

    public init?(rawValue: Int) {
        switch rawValue {
        case 0: self = .unspecified
        case 1: self = .serving
        case 2: self = .notServing
        default: self = .UNRECOGNIZED(rawValue)
        }
    }

    public var rawValue: Int {
        switch self {
        case .unspecified: return 0
        case .serving: return 1
        case .notServing: return 2
        case .UNRECOGNIZED(let value): return value
        }
    }

    public static let allCases: [Ferry_V1_ServingStatus] = [.unspecified, .serving, .notServing]
}

/// Request of Health/Check. Has no fields.
public struct Ferry_V1_HealthCheckRequest: Sendable {
    public var unknownFields = SwiftProtobuf.UnknownStorage()
    public init() {}
}

/// Response of Health/Check.
public struct Ferry_V1_HealthCheckResponse: Sendable {
    public var status: Ferry_V1_ServingStatus = .unspecified
    public var unknownFields = SwiftProtobuf.UnknownStorage()
    public init() {}
}

private let protobufPackage = "ferry.v1"

extension Ferry_V1_ServingStatus: SwiftProtobuf._ProtoNameProviding {
    public static let _protobuf_nameMap = SwiftProtobuf._NameMap(
        bytecode: "\0\u{2}\0SERVING_STATUS_UNSPECIFIED\0\u{1}SERVING\0\u{1}NOT_SERVING\0")
}

extension Ferry_V1_HealthCheckRequest: SwiftProtobuf.Message, SwiftProtobuf._MessageImplementationBase,
    SwiftProtobuf._ProtoNameProviding
{
    public static let protoMessageName: String = protobufPackage + ".HealthCheckRequest"
    public static let _protobuf_nameMap = SwiftProtobuf._NameMap()

    public mutating func decodeMessage<D: SwiftProtobuf.Decoder>(decoder: inout D) throws {
        while try decoder.nextFieldNumber() != nil {}
    }

    public func traverse<V: SwiftProtobuf.Visitor>(visitor: inout V) throws {
        try unknownFields.traverse(visitor: &visitor)
    }

    public static func == (lhs: Ferry_V1_HealthCheckRequest, rhs: Ferry_V1_HealthCheckRequest) -> Bool {
        lhs.unknownFields == rhs.unknownFields
    }
}

extension Ferry_V1_HealthCheckResponse: SwiftProtobuf.Message, SwiftProtobuf._MessageImplementationBase,
    SwiftProtobuf._ProtoNameProviding
{
    public static let protoMessageName: String = protobufPackage + ".HealthCheckResponse"
    public static let _protobuf_nameMap = SwiftProtobuf._NameMap(bytecode: "\0\u{1}status\0")

    public mutating func decodeMessage<D: SwiftProtobuf.Decoder>(decoder: inout D) throws {
        while let fieldNumber = try decoder.nextFieldNumber() {
            switch fieldNumber {
            case 1: try decoder.decodeSingularEnumField(value: &self.status)
            default: break
            }
        }
    }

    public func traverse<V: SwiftProtobuf.Visitor>(visitor: inout V) throws {
        if self.status != .unspecified {
            try visitor.visitSingularEnumField(value: self.status, fieldNumber: 1)
        }
        try unknownFields.traverse(visitor: &visitor)
    }

    public static func == (lhs: Ferry_V1_HealthCheckResponse, rhs: Ferry_V1_HealthCheckResponse) -> Bool {
        lhs.status == rhs.status && lhs.unknownFields == rhs.unknownFields
    }
}

// MARK: - Service

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
            deserializer: GRPCProtobuf.ProtobufDeserializer<Ferry_V1_HealthCheckRequest>(),
            serializer: GRPCProtobuf.ProtobufSerializer<Ferry_V1_HealthCheckResponse>(),
            handler: { request, context in
                let single = try await GRPCCore.ServerRequest(stream: request)
                let response = try await self.check(request: single.message, context: context)
                return GRPCCore.StreamingServerResponse(single: GRPCCore.ServerResponse(message: response, metadata: [:]))
            })
    }

    public func check(request: Ferry_V1_HealthCheckRequest, context: GRPCCore.ServerContext) async throws -> Ferry_V1_HealthCheckResponse {
        var response = Ferry_V1_HealthCheckResponse()
        response.status = .serving
        return response
    }
}

/// The client side: one unary Health/Check on a `GRPCClient`.
extension GRPCCore.GRPCClient {
    public func ferryHealthCheck(options: GRPCCore.CallOptions = .defaults) async throws -> Ferry_V1_HealthCheckResponse {
        try await self.unary(
            request: GRPCCore.ClientRequest(message: Ferry_V1_HealthCheckRequest()),
            descriptor: FerryHealth.check,
            serializer: GRPCProtobuf.ProtobufSerializer<Ferry_V1_HealthCheckRequest>(),
            deserializer: GRPCProtobuf.ProtobufDeserializer<Ferry_V1_HealthCheckResponse>(),
            options: options,
            onResponse: { response in try response.message })
    }
}

import NIOCore
import SwiftProtobuf

/// A caller's role, ordered by privilege: `viewer` < `operator` < `admin`.
/// Each role may do everything the roles below it may.
public enum Role: String, Comparable, Sendable, CaseIterable {
    /// Get, List, Watch (and Health, which needs no role at all).
    case viewer
    /// Also Start, Rerun, Cancel.
    case `operator`
    /// Also instance registration and artifact deletion.
    case admin

    private var rank: Int {
        switch self {
        case .viewer: 0
        case .operator: 1
        case .admin: 2
        }
    }

    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rank < rhs.rank }
}

/// What the server and client need to know of any method, whatever its message types.
public struct MethodInfo: Sendable, Hashable, CustomStringConvertible {
    /// The wire name sent in a `call` frame's `method`, e.g. `ferry.v1.Jobs/StartJob`.
    public let name: String
    /// True for methods that answer with a stream of messages (WatchJob).
    public let isServerStreaming: Bool
    /// The least role a caller needs, or nil when the method needs no token (Health/Check).
    public let requiredRole: Role?
    /// Full proto names of the request and response messages, e.g. `ferry.v1.Job`.
    public let requestMessage: String
    public let responseMessage: String

    public var description: String { name }
}

/// A unary method: one `Request`, one `Response`. The router and the client take the same
/// descriptor, so a handler or a call with the wrong message types does not compile.
public struct UnaryMethod<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>: Sendable {
    public let info: MethodInfo

    init(_ name: String, role: Role?) {
        info = MethodInfo(name: name, isServerStreaming: false, requiredRole: role,
                          requestMessage: Request.protoMessageName, responseMessage: Response.protoMessageName)
    }
}

/// A server-streaming method: one `Request`, any number of `Response`s.
public struct ServerStreamingMethod<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>: Sendable {
    public let info: MethodInfo

    init(_ name: String, role: Role?) {
        info = MethodInfo(name: name, isServerStreaming: true, requiredRole: role,
                          requestMessage: Request.protoMessageName, responseMessage: Response.protoMessageName)
    }
}

/// Every method of `ferry/1`, as declared by the services in `proto/ferry/v1` (a test checks
/// this list against the .proto files), with the role each needs.
public enum FerryMethods {
    public static let startJob = UnaryMethod<StartJobRequest, Job>("ferry.v1.Jobs/StartJob", role: .operator)
    public static let rerunJob = UnaryMethod<RerunJobRequest, Job>("ferry.v1.Jobs/RerunJob", role: .operator)
    public static let watchJob = ServerStreamingMethod<WatchJobRequest, JobEvent>("ferry.v1.Jobs/WatchJob", role: .viewer)
    public static let getJob = UnaryMethod<GetJobRequest, Job>("ferry.v1.Jobs/GetJob", role: .viewer)
    public static let listJobs = UnaryMethod<ListJobsRequest, ListJobsResponse>("ferry.v1.Jobs/ListJobs", role: .viewer)
    public static let cancelJob = UnaryMethod<CancelJobRequest, Job>("ferry.v1.Jobs/CancelJob", role: .operator)
    public static let putInstance = UnaryMethod<PutInstanceRequest, PutInstanceResponse>("ferry.v1.Instances/PutInstance", role: .admin)
    public static let listInstances = UnaryMethod<ListInstancesRequest, ListInstancesResponse>("ferry.v1.Instances/ListInstances", role: .viewer)
    public static let listTenants = UnaryMethod<ListTenantsRequest, ListTenantsResponse>("ferry.v1.Instances/ListTenants", role: .viewer)
    public static let listArtifacts = UnaryMethod<ListArtifactsRequest, ListArtifactsResponse>("ferry.v1.Artifacts/ListArtifacts", role: .viewer)
    public static let getArtifact = UnaryMethod<GetArtifactRequest, Artifact>("ferry.v1.Artifacts/GetArtifact", role: .viewer)
    public static let deleteArtifact = UnaryMethod<DeleteArtifactRequest, Artifact>("ferry.v1.Artifacts/DeleteArtifact", role: .admin)
    public static let healthCheck = UnaryMethod<HealthCheckRequest, HealthCheckResponse>("ferry.v1.Health/Check", role: nil)

    /// All of them, for lookups by wire name.
    public static let all: [MethodInfo] = [
        startJob.info, rerunJob.info, watchJob.info, getJob.info, listJobs.info, cancelJob.info,
        putInstance.info, listInstances.info, listTenants.info, listArtifacts.info, getArtifact.info, deleteArtifact.info,
        healthCheck.info,
    ]

    private static let byName = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// The method with this wire name, if it is one of `ferry/1`'s.
    public static func named(_ name: String) -> MethodInfo? { byName[name] }
}

/// How messages travel: the proto3 JSON mapping, unknown fields ignored. Each request is
/// decoded once, straight from the frame's bytes; each response encoded once, straight into
/// a buffer.
public enum MessageCoding {
    public static let decodingOptions: JSONDecodingOptions = {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        return options
    }()

    public static let encodingOptions = JSONEncodingOptions()

    /// Decodes a message from its JSON text; the error names the field at fault when one
    /// member of the JSON object breaks the message's schema.
    public static func decode<M: SwiftProtobuf.Message>(_ type: M.Type, from json: ByteBuffer) throws(MessageDecodingError) -> M {
        do {
            return try M(jsonUTF8Bytes: MessageBytes(json), options: decodingOptions)
        } catch {
            throw MessageDecodingError(message: M.protoMessageName, field: culprit(M.self, in: json), underlying: "\(error)")
        }
    }

    /// The JSON text of `message`.
    public static func encode<M: SwiftProtobuf.Message>(_ message: M) throws -> ByteBuffer {
        let bytes: MessageBytes = try message.jsonUTF8Bytes(options: encodingOptions)
        return bytes.buffer
    }

    /// The first top-level member that fails to decode on its own. Slow, and only run to
    /// explain an error.
    private static func culprit<M: SwiftProtobuf.Message>(_ type: M.Type, in json: ByteBuffer) -> String? {
        guard case .object(let members)? = JSONValue(parsing: json) else { return nil }
        for key in members.keys.sorted() {
            let single = JSONValue.object([key: members[key]!]).jsonText
            if (try? M(jsonString: single, options: decodingOptions)) == nil { return key }
        }
        return nil
    }
}

/// A message encoded once (its JSON text), typed by the message it came from, so it can be
/// sent to many streams of that response type without encoding it again.
public struct EncodedMessage<Message: SwiftProtobuf.Message & Sendable>: Sendable {
    public let json: ByteBuffer

    public init(_ message: Message) throws {
        json = try MessageCoding.encode(message)
    }
}

/// A `ByteBuffer`'s readable bytes as swift-protobuf's byte container, so messages decode
/// from a frame's slice and encode into a buffer without another copy.
struct MessageBytes: SwiftProtobufContiguousBytes {
    var buffer: ByteBuffer

    init(_ buffer: ByteBuffer) { self.buffer = buffer }

    init(repeating: UInt8, count: Int) {
        buffer = ByteBuffer(repeating: repeating, count: count)
    }

    init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
        buffer = ByteBuffer(bytes: sequence)
    }

    var count: Int { buffer.readableBytes }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try buffer.withUnsafeReadableBytes(body)
    }

    mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try buffer.withUnsafeMutableReadableBytes(body)
    }
}

/// A request or response message that does not fit its type.
public struct MessageDecodingError: Error, Sendable, CustomStringConvertible {
    /// Proto name of the message type, e.g. `ferry.v1.GetJobRequest`.
    public var message: String
    /// The top-level field at fault, when one could be named.
    public var field: String?
    public var underlying: String

    public var description: String {
        if let field { return "field \"\(field)\" has the wrong type or value (\(underlying))" }
        return "not a valid \(message): \(underlying)"
    }
}

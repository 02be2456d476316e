import Foundation
import NIOCore
import SwiftProtobuf

/// An enum of `proto/ferry/v1` with the names its values have on the wire (and in the
/// control database, which stores them as text).
public protocol ProtoNamedEnum: SwiftProtobuf.Enum, CaseIterable {
    /// The value's name in the proto file, e.g. `QUEUED`.
    var name: String { get }
}

extension ProtoNamedEnum {
    /// The value with this proto name; nil for a name the enum does not have.
    public init?(name: String) {
        guard let value = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = value
    }
}

extension JobStatus: ProtoNamedEnum {
    public var name: String {
        switch self {
        case .unspecified: "JOB_STATUS_UNSPECIFIED"
        case .queued: "QUEUED"
        case .running: "RUNNING"
        case .succeeded: "SUCCEEDED"
        case .failed: "FAILED"
        case .cancelled: "CANCELLED"
        case .UNRECOGNIZED(let value): "\(value)"
        }
    }
}

extension JobStatus {
    /// SUCCEEDED, FAILED or CANCELLED: the job will not change any more.
    public var isTerminal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

extension JobKind: ProtoNamedEnum {
    public var name: String {
        switch self {
        case .unspecified: "JOB_KIND_UNSPECIFIED"
        case .clone: "CLONE"
        case .export: "EXPORT"
        case .import: "IMPORT"
        case .instanceReplace: "INSTANCE_REPLACE"
        case .UNRECOGNIZED(let value): "\(value)"
        }
    }
}

extension JobEventType: ProtoNamedEnum {
    public var name: String {
        switch self {
        case .unspecified: "JOB_EVENT_TYPE_UNSPECIFIED"
        case .snapshot: "SNAPSHOT"
        case .progress: "PROGRESS"
        case .status: "STATUS"
        case .UNRECOGNIZED(let value): "\(value)"
        }
    }
}

extension ServingStatus: ProtoNamedEnum {
    public var name: String {
        switch self {
        case .unspecified: "SERVING_STATUS_UNSPECIFIED"
        case .serving: "SERVING"
        case .notServing: "NOT_SERVING"
        case .UNRECOGNIZED(let value): "\(value)"
        }
    }
}

extension Google_Protobuf_Timestamp {
    /// RFC 3339 in UTC with milliseconds, as the proto3 JSON mapping prints it.
    public var rfc3339: String {
        (try? jsonString()).map { String($0.dropFirst().dropLast()) } ?? ""
    }
}

extension SwiftProtobuf.Message {
    /// The message as a ``JSONValue`` (proto3 JSON mapping): for storing it in the control
    /// database's jsonb columns and for status details.
    public func jsonValue() throws -> JSONValue {
        guard let value = JSONValue(parsing: try MessageCoding.encode(self)) else {
            throw RPCError(.internal, "cannot read back the JSON of \(Self.protoMessageName)")
        }
        return value
    }

    /// The message held in `value` (proto3 JSON mapping, unknown fields ignored).
    public init(jsonValue value: JSONValue) throws {
        var buffer = ByteBuffer()
        buffer.writeJSON(value)
        self = try MessageCoding.decode(Self.self, from: buffer)
    }
}

extension CloneParams {
    /// A clone of `sourceTenant` on `sourceInstance` to `targetTenant` on `targetInstance`.
    public static func clone(from sourceInstance: String, _ sourceTenant: String, to targetInstance: String, _ targetTenant: String) -> CloneParams {
        CloneParams.with {
            $0.sourceInstance = sourceInstance
            $0.sourceTenant = sourceTenant
            $0.targetInstance = targetInstance
            $0.targetTenant = targetTenant
        }
    }
}

// Swift mirrors of the messages in proto/ferry/v1/health.proto, in the proto3 JSON mapping.
// proto/ is the source of truth: field meanings are documented there.

/// Whether a server is serving (`ferry.v1.ServingStatus`).
public enum ServingStatus: String, Codable, Sendable, CaseIterable {
    case unspecified = "SERVING_STATUS_UNSPECIFIED"
    case serving = "SERVING"
    case notServing = "NOT_SERVING"
}

/// Request of `ferry.v1.Health/Check` (no fields).
public struct HealthCheckRequest: Codable, Sendable, Hashable {
    public init() {}
}

/// Response of `ferry.v1.Health/Check`.
public struct HealthCheckResponse: Codable, Sendable, Hashable {
    public var status: ServingStatus?

    public init(status: ServingStatus? = nil) {
        self.status = status
    }
}

// Swift mirrors of the messages in proto/ferry/v1/instances.proto, in the proto3 JSON mapping.
// proto/ is the source of truth: field meanings are documented there.

/// A registered PostgreSQL instance (`ferry.v1.Instance`); `dsn` is input only and never returned.
public struct Instance: Codable, Sendable, Hashable {
    public var id: String?
    public var dsn: String?
    public var hasPassword: Bool?
    public var createdAt: ProtoTimestamp?
    public var updatedAt: ProtoTimestamp?

    public init(id: String? = nil, dsn: String? = nil, hasPassword: Bool? = nil, createdAt: ProtoTimestamp? = nil, updatedAt: ProtoTimestamp? = nil) {
        self.id = id
        self.dsn = dsn
        self.hasPassword = hasPassword
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// Request of `ferry.v1.Instances/PutInstance`.
public struct PutInstanceRequest: Codable, Sendable, Hashable {
    public var id: String?
    public var dsn: String?

    public init(id: String? = nil, dsn: String? = nil) {
        self.id = id
        self.dsn = dsn
    }
}

/// Response of `ferry.v1.Instances/PutInstance`.
public struct PutInstanceResponse: Codable, Sendable, Hashable {
    public var instance: Instance?

    public init(instance: Instance? = nil) {
        self.instance = instance
    }
}

/// Request of `ferry.v1.Instances/ListInstances` (no fields).
public struct ListInstancesRequest: Codable, Sendable, Hashable {
    public init() {}
}

/// Response of `ferry.v1.Instances/ListInstances`.
public struct ListInstancesResponse: Codable, Sendable, Hashable {
    public var instances: [Instance]

    public init(instances: [Instance] = []) {
        self.instances = instances
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        instances = try container.decodeIfPresent([Instance].self, forKey: .instances) ?? []
    }
}

/// Request of `ferry.v1.Instances/ListTenants`.
public struct ListTenantsRequest: Codable, Sendable, Hashable {
    public var instanceId: String?

    public init(instanceId: String? = nil) {
        self.instanceId = instanceId
    }
}

/// Response of `ferry.v1.Instances/ListTenants`.
public struct ListTenantsResponse: Codable, Sendable, Hashable {
    public var tenants: [String]

    public init(tenants: [String] = []) {
        self.tenants = tenants
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        tenants = try container.decodeIfPresent([String].self, forKey: .tenants) ?? []
    }
}

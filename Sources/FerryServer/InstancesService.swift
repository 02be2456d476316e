import ControlDatabase
import FerryProtocol
import FerryRPC
import Foundation
import JobStore
import Logging
import PostgresNIO
import SwiftProtobuf

/// The handlers of `ferry.v1.Instances`. DSNs are stored as given (ferryd needs them to
/// connect) and never returned or logged.
struct InstancesService: Sendable {
    let client: PostgresClient
    let logger: Logger
    /// How long PutInstance and ListTenants wait for an instance to answer.
    var connectTimeout = 5

    func register(into router: inout MethodRouter) {
        router.register(FerryMethods.putInstance) { request, _ in try await putInstance(request) }
        router.register(FerryMethods.listInstances) { _, _ in try await listInstances() }
        router.register(FerryMethods.listTenants) { request, _ in try await listTenants(request) }
    }

    func putInstance(_ request: PutInstanceRequest) async throws -> PutInstanceResponse {
        let id = request.id
        guard !id.isEmpty else { throw RPCError(.invalidArgument, "id is required") }
        guard JobPlan.isInstanceID(id) else {
            throw RPCError(.invalidArgument, "id \"\(id.prefix(80))\" is not an instance id (lower-case letters, digits, '_' and '-', at most 63, starting with a letter or digit)")
        }
        let dsn = request.dsn
        guard !dsn.isEmpty else { throw RPCError(.invalidArgument, "dsn is required") }
        let url = try Self.parse(dsn)
        // Only a DSN that connects is stored.
        _ = try await Self.withInstance(url, id: id, timeout: connectTimeout, logger: logger) { connection in
            try await connection.execute("SELECT 1", logger: logger)
        }
        let row = try await database { connection in
            try await connection.execute("""
                INSERT INTO instances (id, dsn, created_at, updated_at) VALUES (\(id), \(dsn), clock_timestamp(), clock_timestamp())
                ON CONFLICT (id) DO UPDATE SET dsn = EXCLUDED.dsn, updated_at = clock_timestamp()
                RETURNING created_at, updated_at
                """, logger: logger)
        }.first
        guard let (createdAt, updatedAt) = try row?.decode((Date, Date).self) else { throw RPCError(.internal, "the instance was not stored") }
        logger.info("instance registered", metadata: ["instance": "\(id)", "dsn": "\(url)"])
        return PutInstanceResponse.with {
            $0.instance = Self.instance(id: id, hasPassword: url.password != nil, createdAt: createdAt, updatedAt: updatedAt)
        }
    }

    func listInstances() async throws -> ListInstancesResponse {
        let rows = try await database { connection in
            try await connection.execute("SELECT id, dsn, created_at, updated_at FROM instances ORDER BY id", logger: logger)
        }
        let instances = try rows.map { row in
            let (id, dsn, createdAt, updatedAt) = try row.decode((String, String, Date, Date).self)
            let hasPassword = (try? DatabaseURL(parsingConnectionString: dsn))?.password != nil
            return Self.instance(id: id, hasPassword: hasPassword, createdAt: createdAt, updatedAt: updatedAt)
        }
        return ListInstancesResponse.with { $0.instances = instances }
    }

    /// An instance as the API shows it: never its DSN (which may hold a password).
    private static func instance(id: String, hasPassword: Bool, createdAt: Date, updatedAt: Date) -> Instance {
        Instance.with {
            $0.id = id
            $0.hasPassword_p = hasPassword
            $0.createdAt = Google_Protobuf_Timestamp(date: createdAt)
            $0.updatedAt = Google_Protobuf_Timestamp(date: updatedAt)
        }
    }

    /// Tenants are the instance's schemas, system schemas and `public` excluded.
    func listTenants(_ request: ListTenantsRequest) async throws -> ListTenantsResponse {
        let id = request.instanceID
        guard !id.isEmpty else { throw RPCError(.invalidArgument, "instanceId is required") }
        guard JobPlan.isInstanceID(id) else { throw RPCError(.invalidArgument, "instanceId \"\(id.prefix(80))\" is not an instance id") }
        let url = try await instanceURL(id)
        let names = try await Self.withInstance(url, id: id, timeout: connectTimeout, logger: logger) { connection in
            try await connection.execute("""
                SELECT nspname::text FROM pg_namespace
                 WHERE nspname !~ '^pg_' AND nspname NOT IN ('information_schema', 'public') ORDER BY 1
                """, logger: logger).map { try $0.decode(String.self) }
        }
        let tenants = names.filter(JobPlan.isTenantName)
        return ListTenantsResponse.with { $0.tenants = tenants }
    }

    /// The stored connection URL of a registered instance, or NOT_FOUND.
    func instanceURL(_ id: String) async throws -> DatabaseURL {
        let rows = try await database { connection in
            try await connection.execute("SELECT dsn FROM instances WHERE id = \(id)", logger: logger)
        }
        guard let dsn = try rows.first?.decode(String.self) else {
            throw RPCError(.notFound, "instance \(id) is not registered")
        }
        return try Self.parse(dsn)
    }

    static func parse(_ dsn: String) throws -> DatabaseURL {
        do {
            return try DatabaseURL(parsingConnectionString: dsn)
        } catch {
            throw RPCError(.invalidArgument, "dsn: \(error.message)")
        }
    }

    /// Connects to an instance; failures are FAILED_PRECONDITION naming the instance, with
    /// the reason but never the password.
    static func withInstance<T: Sendable>(
        _ url: DatabaseURL, id: String, timeout: Int, logger: Logger, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        var url = url
        url.connectTimeout = min(url.connectTimeout, timeout)
        do {
            return try await url.withConnection(logger: logger, body)
        } catch let error as DatabaseError {
            throw RPCError(.failedPrecondition, "instance \(id): \(error.message)")
        } catch let error as RPCError {
            throw error
        } catch {
            throw RPCError(.failedPrecondition, "instance \(id): \(String(describing: error).prefix(300))")
        }
    }

    func database<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await client.controlDatabaseCall(logger: logger, body)
    }
}

import Foundation
import NIOCore
import NIOPosix
import PostgresNIO

/// A failure talking to a PostgreSQL database, reduced to one line a person can act on.
///
/// PostgresNIO's own errors deliberately say little in their description (to avoid leaking
/// data); this type digs out the SQLSTATE, the server's message and the socket error, and
/// names the endpoint — never the password.
public struct DatabaseError: Error, Sendable, CustomStringConvertible {
    /// The broad kind of failure; start-up code maps these to exit codes and messages.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// Nothing listens at the endpoint, or the host cannot be reached or resolved.
        public static let unreachable = Code("unreachable")
        /// The server refused the login: wrong password, unknown role, pg_hba rule.
        public static let authentication = Code("authentication")
        /// The named database does not exist.
        public static let unknownDatabase = Code("unknownDatabase")
        /// TLS was required but could not be set up.
        public static let tls = Code("tls")
        /// The connection was lost or closed by the server.
        public static let connectionLost = Code("connectionLost")
        /// A statement failed on the server; `sqlState` says why.
        public static let server = Code("server")
        /// Anything else.
        public static let other = Code("other")
    }

    public var code: Code
    /// The PostgreSQL SQLSTATE, when the server answered with an error.
    public var sqlState: String?
    /// One line, with endpoint and cause; safe to log and to show.
    public var message: String

    public var description: String { message }

    public init(code: Code, sqlState: String? = nil, message: String) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
    }

    /// Describes an error raised while connecting to `url`.
    public init(connecting url: DatabaseURL, error: any Error) {
        let target = "\(url.endpoint) (database \"\(url.database)\", user \"\(url.user)\")"
        if let psql = error as? PSQLError {
            switch psql.code {
            case .server:
                let state = psql.serverInfo?[.sqlState]
                let serverMessage = psql.serverInfo?[.message] ?? "no message"
                switch state {
                case "28P01":
                    self.init(code: .authentication, sqlState: state, message: "the database at \(target) rejected the password (\(serverMessage))")
                case "28000":
                    self.init(code: .authentication, sqlState: state, message: "the database at \(target) refused the login: \(serverMessage)")
                case "3D000":
                    self.init(code: .unknownDatabase, sqlState: state, message: "the database at \(url.endpoint) has no database \"\(url.database)\" (\(serverMessage))")
                default:
                    self.init(code: .server, sqlState: state, message: "the database at \(target) refused the connection: \(serverMessage) (SQLSTATE \(state ?? "?"))")
                }
            case .sslUnsupported:
                self.init(code: .tls, message: "the database at \(target) does not offer TLS, but sslmode=\(url.sslMode.rawValue) requires it")
            case .failedToAddSSLHandler, .receivedUnencryptedDataAfterSSLRequest:
                self.init(code: .tls, message: "TLS set-up with the database at \(target) failed")
            case .unsupportedAuthMechanism, .authMechanismRequiresPassword, .saslError:
                let needsPassword = psql.code == .authMechanismRequiresPassword
                self.init(code: .authentication, message: needsPassword
                    ? "the database at \(target) asks for a password and the URL gives none"
                    : "authentication with the database at \(target) failed (\(psql.code))")
            case .connectionError:
                self.init(code: .unreachable, message: "cannot reach the database at \(target): \(Self.socketCause(psql.underlying))")
            case .serverClosedConnection, .uncleanShutdown:
                self.init(code: .connectionLost, message: "the database at \(target) closed the connection during start-up (\(Self.socketCause(psql.underlying)))")
            default:
                self.init(code: .other, message: "cannot connect to the database at \(target): \(psql.code)")
            }
        } else if error is ChannelError || error is IOError || error is NIOConnectionError {
            self.init(code: .unreachable, message: "cannot reach the database at \(target): \(Self.socketCause(error))")
        } else {
            self.init(code: .other, message: "cannot connect to the database at \(target): \(Self.socketCause(error))")
        }
    }

    /// Describes an error raised by a statement; `context` says what Ferry was doing.
    public init(running context: String, error: any Error) {
        if let psql = error as? PSQLError {
            if psql.code == .server {
                let state = psql.serverInfo?[.sqlState]
                let serverMessage = psql.serverInfo?[.message] ?? "no message"
                self.init(code: .server, sqlState: state, message: "\(context) failed: \(serverMessage) (SQLSTATE \(state ?? "?"))")
            } else {
                self.init(code: .connectionLost, message: "\(context) failed: the connection was lost (\(psql.code): \(Self.socketCause(psql.underlying)))")
            }
        } else if let database = error as? DatabaseError {
            self = database
        } else {
            self.init(code: .other, message: "\(context) failed: \(error)")
        }
    }

    /// The SQLSTATE inside any error PostgresNIO raised, if the server sent one.
    public static func sqlState(of error: any Error) -> String? {
        if let psql = error as? PSQLError { return psql.serverInfo?[.sqlState] }
        if let database = error as? DatabaseError { return database.sqlState }
        if let transaction = error as? PostgresTransactionError {
            return transaction.closureError.flatMap(sqlState(of:))
                ?? transaction.beginError.flatMap(sqlState(of:))
                ?? transaction.commitError.flatMap(sqlState(of:))
        }
        return nil
    }

    /// A short cause for a socket-level failure, e.g. "connection refused".
    static func socketCause(_ error: (any Error)?) -> String {
        guard let error else { return "no further detail" }
        switch error {
        case let io as IOError:
            return String(cString: strerror(io.errnoCode)).lowercased()
        case let connection as NIOConnectionError:
            if let first = connection.connectionErrors.first {
                return socketCause(first.error)
            }
            if connection.dnsAError != nil || connection.dnsAAAAError != nil {
                return "the host name \"\(connection.host)\" could not be resolved"
            }
            return "no address to connect to"
        case let channel as ChannelError:
            if case .connectTimeout(let amount) = channel {
                return "timed out after \(amount.nanoseconds / 1_000_000_000)s"
            }
            return "\(channel)"
        case let psql as PSQLError:
            return "\(psql.code)"
        default:
            return "\(error)"
        }
    }
}

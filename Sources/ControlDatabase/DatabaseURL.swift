import Foundation
import NIOSSL
import PostgresNIO

/// A parsed `postgres://` connection URL.
///
/// Accepted form: `postgres[ql]://user[:password]@host[:port][/database][?param=value&…]`
/// with the parameters `sslmode` (`disable`, `prefer` (default), `require`, `verify-ca`,
/// `verify-full`), `application_name` and `connect_timeout` (seconds). Anything else is
/// refused with a ``DatabaseURL/ParseError`` rather than silently ignored.
///
/// `description` never shows the password, so a `DatabaseURL` is safe to log.
public struct DatabaseURL: Sendable, Hashable, CustomStringConvertible {
    /// How to use TLS towards the server, with libpq's names and meanings.
    public enum SSLMode: String, Sendable, CaseIterable {
        case disable
        case prefer
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var sslMode: SSLMode
    public var applicationName: String?
    /// Seconds to wait for the TCP connection and the start-up handshake.
    public var connectTimeout: Int

    /// Why a URL was refused. The message quotes no password.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public init(
        host: String,
        port: Int = 5432,
        user: String,
        password: String? = nil,
        database: String,
        sslMode: SSLMode = .prefer,
        applicationName: String? = nil,
        connectTimeout: Int = 10
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.sslMode = sslMode
        self.applicationName = applicationName
        self.connectTimeout = connectTimeout
    }

    /// Parses `string`; the error names what is wrong without repeating the secret parts.
    public init(parsing string: String) throws(ParseError) {
        let trimmed = string.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else {
            throw ParseError(message: "the database URL is empty")
        }
        guard let schemeEnd = trimmed.range(of: "://") else {
            throw ParseError(message: "the database URL must start with postgres:// (expected postgres://user[:password]@host[:port]/database)")
        }
        let scheme = trimmed[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "postgres" || scheme == "postgresql" else {
            throw ParseError(message: "the database URL has scheme '\(scheme)'; expected postgres:// or postgresql://")
        }
        guard let components = URLComponents(string: trimmed) else {
            throw ParseError(message: "the database URL is not a valid URL (check for unescaped characters; escape '@', ':' and '/' in the password as %40, %3A and %2F)")
        }
        guard var host = components.host, !host.isEmpty else {
            throw ParseError(message: "the database URL names no host (expected postgres://user[:password]@host[:port]/database)")
        }
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        // URLComponents traps on some out-of-range ports, so read the port text ourselves.
        var port = 5432
        if let portRange = components.rangeOfPort {
            let portText = trimmed[portRange]
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw ParseError(message: "the database URL has port '\(portText)'; expected a number from 1 to 65535")
            }
            port = value
        }
        guard let user = components.percentEncodedUser?.removingPercentEncoding, !user.isEmpty else {
            throw ParseError(message: "the database URL names no user (expected postgres://user[:password]@host[:port]/database)")
        }
        let password = components.percentEncodedPassword?.removingPercentEncoding
        var database = components.percentEncodedPath
        if database.hasPrefix("/") { database.removeFirst() }
        database = database.removingPercentEncoding ?? database
        if database.contains("/") {
            // A path holding '@' is the rest of a password with an unescaped '@' and '/'
            // (postgres://u:p@ss/word@host/db): not quoted.
            throw ParseError(message: database.contains("@")
                ? "the database URL's path is not a single database name (escape '@', ':' and '/' in the password as %40, %3A and %2F)"
                : "the database URL's path must be a single database name, got '\(database)'")
        }
        if database.isEmpty { database = user }

        var options = Options()
        for item in components.queryItems ?? [] {
            try options.apply(item.name, item.value ?? "", in: "the database URL")
        }
        self.init(
            host: host, port: port, user: user, password: password, database: database,
            sslMode: options.sslMode, applicationName: options.applicationName, connectTimeout: options.connectTimeout)
    }

    /// The parameters both connection-string forms accept beside the address and credentials.
    private struct Options {
        var sslMode = SSLMode.prefer
        var applicationName: String?
        var connectTimeout = 10

        mutating func apply(_ name: String, _ value: String, in source: String) throws(ParseError) {
            switch name {
            case "sslmode":
                guard let mode = SSLMode(rawValue: value) else {
                    let allowed = SSLMode.allCases.map(\.rawValue).joined(separator: ", ")
                    throw ParseError(message: "\(source) has sslmode '\(value)'; expected one of \(allowed)")
                }
                sslMode = mode
            case "application_name":
                applicationName = value
            case "connect_timeout":
                guard let seconds = Int(value), seconds > 0 else {
                    throw ParseError(message: "\(source) has connect_timeout '\(value)'; expected a positive number of seconds")
                }
                connectTimeout = seconds
            default:
                throw ParseError(message: "\(source) has unsupported parameter '\(name)' (supported: sslmode, application_name, connect_timeout)")
            }
        }
    }

    /// Parses a libpq connection string in either form: a `postgres://` URL, or
    /// space-separated `key=value` pairs (`host`, `port`, `user`, `password`, `dbname`, and
    /// the URL's parameters; values may be single-quoted with `\'` and `\\` escapes).
    /// Errors never quote the password.
    public init(parsingConnectionString string: String) throws(ParseError) {
        let trimmed = string.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty || trimmed.contains("://") {
            try self.init(parsing: trimmed)
            return
        }
        var pairs: [String: String] = [:]
        var characters = Substring(trimmed)
        var previousKey: String?
        while let start = characters.firstIndex(where: { !$0.isWhitespace }) {
            characters = characters[start...]
            // A key is one word, then '=' (spaces around it allowed, as libpq does).
            let keyEnd = characters.firstIndex(where: { $0.isWhitespace || $0 == "=" }) ?? characters.endIndex
            let key = String(characters[..<keyEnd])
            let rest = characters[keyEnd...].drop(while: \.isWhitespace)
            guard !key.isEmpty, rest.first == "=" else {
                // The stray word is not quoted: it may be the rest of an unquoted password.
                let after = previousKey.map { " after \($0)=" } ?? ""
                throw ParseError(message: "the connection string has a word without '='\(after) (expected key=value pairs, values with spaces in single quotes, or a postgres:// URL)")
            }
            let equals = rest.startIndex
            characters = characters[characters.index(after: equals)...].drop(while: { $0 == " " })
            var value = ""
            if characters.first == "'" {
                characters = characters.dropFirst()
                var closed = false
                while let character = characters.first {
                    characters = characters.dropFirst()
                    if character == "\\", let next = characters.first {
                        value.append(next)
                        characters = characters.dropFirst()
                    } else if character == "'" {
                        closed = true
                        break
                    } else {
                        value.append(character)
                    }
                }
                guard closed else { throw ParseError(message: "the connection string has an unterminated quoted value for '\(key)'") }
            } else {
                let end = characters.firstIndex(where: \.isWhitespace) ?? characters.endIndex
                value = String(characters[..<end])
                characters = characters[end...]
            }
            pairs[key] = value
            previousKey = key
        }
        guard let host = pairs.removeValue(forKey: "host"), !host.isEmpty else {
            throw ParseError(message: "the connection string names no host")
        }
        guard let user = pairs.removeValue(forKey: "user"), !user.isEmpty else {
            throw ParseError(message: "the connection string names no user")
        }
        var port = 5432
        if let text = pairs.removeValue(forKey: "port") {
            guard let value = Int(text), (1...65535).contains(value) else {
                throw ParseError(message: "the connection string has port '\(text)'; expected a number from 1 to 65535")
            }
            port = value
        }
        let password = pairs.removeValue(forKey: "password")
        let database = pairs.removeValue(forKey: "dbname") ?? user
        var options = Options()
        for (name, value) in pairs.sorted(by: { $0.key < $1.key }) {
            try options.apply(name, value, in: "the connection string")
        }
        self.init(
            host: host, port: port, user: user, password: password, database: database,
            sslMode: options.sslMode, applicationName: options.applicationName, connectTimeout: options.connectTimeout)
    }

    /// Host and port as one would type them, with IPv6 addresses bracketed.
    public var endpoint: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The URL with the password replaced by `***`: safe for logs and error messages.
    public var description: String {
        render(password: password == nil ? nil : "***")
    }

    /// The full URL including the password, for handing to a child process. Never log it.
    public var secretURLString: String {
        render(password: password.map(Self.escape))
    }

    /// The same server, another database.
    public func with(database: String) -> DatabaseURL {
        var copy = self
        copy.database = database
        return copy
    }

    private func render(password: String?) -> String {
        var text = "postgres://\(Self.escape(user))"
        if let password { text += ":\(password)" }
        text += "@\(endpoint)/\(Self.escape(database))"
        var params: [String] = []
        if sslMode != .prefer { params.append("sslmode=\(sslMode.rawValue)") }
        if let applicationName { params.append("application_name=\(Self.escape(applicationName))") }
        if connectTimeout != 10 { params.append("connect_timeout=\(connectTimeout)") }
        if !params.isEmpty { text += "?" + params.joined(separator: "&") }
        return text
    }

    private static func escape(_ part: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return part.addingPercentEncoding(withAllowedCharacters: allowed) ?? part
    }

    /// The application_name Ferry's connections use unless the URL names one. Always sending
    /// one matters behind PgBouncer, which then renames a pooled server connection for each
    /// client instead of leaving the previous client's name on it.
    public static let defaultApplicationName = "ferryd"

    /// The PostgresNIO configuration for this URL.
    public func connectionConfiguration() throws -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: user, password: password,
            database: database, tls: try tls())
        configuration.options.connectTimeout = .seconds(Int64(connectTimeout))
        configuration.options.additionalStartupParameters.append(("application_name", applicationName ?? Self.defaultApplicationName))
        return configuration
    }

    /// The PostgresNIO pool configuration for this URL.
    public func clientConfiguration() -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: user, password: password,
            database: database, tls: clientTLS())
        configuration.options.connectTimeout = .seconds(connectTimeout)
        configuration.options.additionalStartupParameters.append(("application_name", applicationName ?? Self.defaultApplicationName))
        return configuration
    }

    private func tlsConfiguration() -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        switch sslMode {
        case .disable, .prefer, .require: tls.certificateVerification = .none
        case .verifyCA: tls.certificateVerification = .noHostnameVerification
        case .verifyFull: tls.certificateVerification = .fullVerification
        }
        return tls
    }

    private func tls() throws -> PostgresConnection.Configuration.TLS {
        switch sslMode {
        case .disable: return .disable
        case .prefer: return .prefer(try NIOSSLContext(configuration: tlsConfiguration()))
        case .require, .verifyCA, .verifyFull: return .require(try NIOSSLContext(configuration: tlsConfiguration()))
        }
    }

    private func clientTLS() -> PostgresClient.Configuration.TLS {
        switch sslMode {
        case .disable: return .disable
        case .prefer: return .prefer(tlsConfiguration())
        case .require, .verifyCA, .verifyFull: return .require(tlsConfiguration())
        }
    }
}

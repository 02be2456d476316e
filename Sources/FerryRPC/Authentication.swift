import Crypto
import FerryProtocol
import Foundation

/// Who is calling, as established from a bearer token.
public struct Principal: Sendable, Hashable {
    public var name: String
    public var role: Role

    public init(name: String, role: Role) {
        self.name = name
        self.role = role
    }
}

/// Bearer tokens, kept only as SHA-256 hashes.
///
/// The tokens file has one token per line: `sha256:<hex> <principal> <role>`; blank lines
/// and `#` comments are ignored. `ferryd token create` appends such lines. A token itself is
/// never stored, logged or compared in the clear.
public struct TokenStore: Sendable {
    private var principals: [String: Principal]

    public init(_ entries: [(hash: String, principal: Principal)] = []) {
        principals = Dictionary(entries.map { ($0.hash, $0.principal) }, uniquingKeysWith: { _, last in last })
    }

    public var isEmpty: Bool { principals.isEmpty }

    /// This store plus `other`'s tokens; a hash in both takes `other`'s principal.
    public func merging(_ other: TokenStore) -> TokenStore {
        var merged = self
        merged.principals.merge(other.principals) { _, new in new }
        return merged
    }

    /// The hash under which `token` is stored: `sha256:<hex>`.
    public static func hash(_ token: String) -> String {
        "sha256:" + SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// A new random token (256 bits, URL-safe).
    public static func generateToken() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return "fy_" + Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// The line for a tokens file.
    public static func line(token: String, principal: Principal) -> String {
        "\(hash(token)) \(principal.name) \(principal.role.rawValue)"
    }

    /// Why a tokens file was refused.
    public struct LoadError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public static func load(file: String) throws(LoadError) -> TokenStore {
        guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
            throw LoadError(message: "cannot read the tokens file \(file)")
        }
        return try parse(text, source: file)
    }

    public static func parse(_ text: String, source: String) throws(LoadError) -> TokenStore {
        var entries: [(String, Principal)] = []
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 3, fields[0].hasPrefix("sha256:"), fields[0].count == 71,
                  fields[0].dropFirst(7).allSatisfy(\.isHexDigit)
            else {
                throw LoadError(message: "\(source):\(index + 1): expected 'sha256:<64 hex digits> <principal> <role>'")
            }
            guard let role = Role(rawValue: String(fields[2])) else {
                throw LoadError(message: "\(source):\(index + 1): unknown role '\(fields[2])' (viewer, operator or admin)")
            }
            entries.append((String(fields[0]).lowercased(), Principal(name: String(fields[1]), role: role)))
        }
        return TokenStore(entries)
    }

    /// The principal for an `authorization` metadata value, or the status to answer.
    public func authenticate(_ authorization: String?) -> Result<Principal, RPCError> {
        guard let authorization, !authorization.isEmpty else {
            return .failure(RPCError(.unauthenticated, "missing bearer token: set metadata \"authorization\" to \"Bearer <token>\""))
        }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer", !parts[1].isEmpty else {
            return .failure(RPCError(.unauthenticated, "malformed authorization: expected \"Bearer <token>\""))
        }
        guard let principal = principals[Self.hash(String(parts[1]))] else {
            return .failure(RPCError(.unauthenticated, "unknown bearer token"))
        }
        return .success(principal)
    }
}

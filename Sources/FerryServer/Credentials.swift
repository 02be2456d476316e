import FerryRPC
import Foundation
import Logging
import NIOSSL

/// The TLS material and tokens `ferryd serve` runs with, from files and environment, or
/// generated when none are given (the embedded default, and a first start in development).
struct ServerCredentials {
    var certificateChain: [NIOSSLCertificate]
    var privateKey: NIOSSLPrivateKey
    var clientCertificateAuthorities: [NIOSSLCertificate]?
    var tokens: TokenStore
    /// The certificate file clients should trust (the server's own certificate when
    /// self-signed, else the configured chain).
    var certificateFile: String
    /// The file holding the generated admin token in the clear, when one was generated.
    var adminTokenFile: String?
    /// A directory this process created for generated credentials, removed on exit.
    var temporaryDirectory: String?

    /// What the configuration names, read and checked; `complete` generates the rest.
    struct Configured {
        var tls: (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, file: String)?
        var clientCertificateAuthorities: [NIOSSLCertificate]?
        var tokens: TokenStore
        var needsTokens: Bool
        var stateDirectory: String?
    }

    /// Reads and checks the configured certificate, key, client CAs and tokens. Called
    /// before anything else, so a mistake is reported before the database is touched or
    /// anything is generated or logged.
    static func load(_ configuration: ServerConfiguration) throws -> Configured {
        var configuredTLS: (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, file: String)?
        switch (configuration.tlsCertificateFile, configuration.tlsKeyFile) {
        case let (certificateFile?, keyFile?):
            let (chain, key) = try loadKeyPair(certificateFile: certificateFile, keyFile: keyFile)
            do {
                _ = try RPCServerConfiguration(certificateChain: chain, privateKey: key).makeSSLContext()
            } catch {
                throw StartupFailure(message: "the TLS certificate \(certificateFile) and key \(keyFile) cannot be used together (does the key belong to the certificate?): \(error)")
            }
            configuredTLS = (chain, key, certificateFile)
        case (nil, nil):
            configuredTLS = nil
        default:
            throw StartupFailure(message: "a TLS certificate needs its key and a key its certificate: set both --tls-cert and --tls-key (FERRY_TLS_CERT, FERRY_TLS_KEY), or neither for a self-signed one")
        }
        var clientCertificateAuthorities: [NIOSSLCertificate]?
        if let caFile = configuration.tlsClientCAFile {
            let authorities = try readPEM(caFile, what: "client CA") { try NIOSSLCertificate.fromPEMFile($0) }
            guard !authorities.isEmpty else { throw StartupFailure(message: "the client CA file \(caFile) holds no PEM certificate") }
            clientCertificateAuthorities = authorities
        }
        var tokens = TokenStore()
        do {
            if let tokensFile = configuration.tokensFile {
                tokens = tokens.merging(try TokenStore.load(file: tokensFile))
            }
            if let text = configuration.tokensText, !text.isEmpty {
                tokens = tokens.merging(try TokenStore.parse(text, source: "FERRY_TOKENS"))
            }
        } catch {
            throw StartupFailure(message: error.message)
        }
        let needsTokens = configuration.tokensFile == nil && (configuration.tokensText ?? "").isEmpty
        if let stateDirectory = configuration.stateDirectory, configuredTLS == nil || needsTokens {
            try checkStateDirectory(stateDirectory, usesKey: configuredTLS == nil, usesToken: needsTokens)
        }
        return Configured(
            tls: configuredTLS, clientCertificateAuthorities: clientCertificateAuthorities, tokens: tokens,
            needsTokens: needsTokens, stateDirectory: configuration.stateDirectory)
    }

    /// Generates what the configuration left out into the state directory.
    ///
    /// - Parameter defaultDirectory: where generated credentials go without a configured
    ///   state directory (the embedded cluster's own directory, so even SIGKILL leaves no
    ///   key behind); `nil` means a fresh temporary directory.
    static func complete(_ configured: Configured, defaultDirectory: String?, logger: Logger) throws -> ServerCredentials {
        let (configuredTLS, clientCertificateAuthorities, needsTokens) = (configured.tls, configured.clientCertificateAuthorities, configured.needsTokens)
        var tokens = configured.tokens
        if let configuredTLS, !needsTokens {
            return ServerCredentials(
                certificateChain: configuredTLS.chain, privateKey: configuredTLS.key,
                clientCertificateAuthorities: clientCertificateAuthorities, tokens: tokens,
                certificateFile: configuredTLS.file, adminTokenFile: nil, temporaryDirectory: nil)
        }

        // Generate what is missing into the state directory.
        var temporaryDirectory: String?
        let directory: String
        if let chosen = configured.stateDirectory ?? defaultDirectory {
            directory = chosen
        } else {
            var template = Array((FileManager.default.temporaryDirectory.path + "/ferryd-XXXXXX").utf8CString)
            guard let made = mkdtemp(&template) else {
                throw StartupFailure(message: "cannot create a directory for generated credentials: \(String(cString: strerror(errno)))")
            }
            directory = String(cString: made)
            temporaryDirectory = directory
        }
        do {
            try createPrivateDirectory(directory)
            var tls = configuredTLS
            if tls == nil {
                let (certificateFile, keyFile) = (directory + "/cert.pem", directory + "/key.pem")
                if FileManager.default.fileExists(atPath: certificateFile), FileManager.default.fileExists(atPath: keyFile) {
                    logger.notice("serving the self-signed TLS certificate kept in the state directory", metadata: ["certificate": "\(certificateFile)"])
                } else {
                    _ = try SelfSignedCertificate.generate().write(to: directory)
                    logger.notice("generated a self-signed TLS certificate; clients trust it with --ca-file", metadata: ["certificate": "\(certificateFile)"])
                }
                let (chain, key) = try loadKeyPair(certificateFile: certificateFile, keyFile: keyFile)
                tls = (chain, key, certificateFile)
            }
            var adminTokenFile: String?
            if needsTokens {
                let file = directory + "/admin.token"
                let token: String
                if let kept = FileManager.default.contents(atPath: file).flatMap({ String(data: $0, encoding: .utf8) })?
                    .trimmingCharacters(in: .whitespacesAndNewlines), !kept.isEmpty {
                    token = kept
                    logger.notice("using the admin token kept in the state directory", metadata: ["token_file": "\(file)"])
                } else {
                    token = TokenStore.generateToken()
                    try writePrivateFile(file, contents: token + "\n")
                    logger.notice("generated an admin token; clients use it with --token-file", metadata: ["token_file": "\(file)"])
                }
                tokens = tokens.merging(TokenStore([(TokenStore.hash(token), Principal(name: "admin", role: .admin))]))
                adminTokenFile = file
            }
            return ServerCredentials(
                certificateChain: tls!.chain, privateKey: tls!.key,
                clientCertificateAuthorities: clientCertificateAuthorities, tokens: tokens,
                certificateFile: tls!.file, adminTokenFile: adminTokenFile,
                temporaryDirectory: temporaryDirectory)
        } catch {
            if let temporaryDirectory { try? FileManager.default.removeItem(atPath: temporaryDirectory) }
            throw error
        }
    }

    /// A state directory that already exists is adopted only if it is as private as one
    /// ferryd creates: a directory of this user that nobody else can enter, whose key and
    /// admin token are files of this user that nobody else can read or write, and whose
    /// admin token looks like one ferryd generates. Otherwise another local user might have
    /// read the key or token, or planted a token of their own choosing for us to accept as
    /// admin. An empty `admin.token` (left by a start that died while writing it) is
    /// replaced like a missing one.
    static func checkStateDirectory(_ directory: String, usesKey: Bool, usesToken: Bool) throws {
        guard let info = status(of: directory) else { return }  // created private later
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw StartupFailure(message: "the state directory \(directory) is not a directory: choose another --state-dir")
        }
        try checkPrivate(directory, info, what: "state directory", fix: "chmod 700 \(directory)")
        if usesKey, let key = status(of: directory + "/key.pem") {
            try checkPrivateFile(directory + "/key.pem", key, what: "TLS key")
        }
        let tokenFile = directory + "/admin.token"
        if usesToken, let token = status(of: tokenFile) {
            try checkPrivateFile(tokenFile, token, what: "admin token file")
            let kept = (FileManager.default.contents(atPath: tokenFile).flatMap { String(data: $0, encoding: .utf8) } ?? "\u{FFFD}")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            guard kept.isEmpty || isGeneratedToken(kept) else {
                throw StartupFailure(message: "the admin token file \(tokenFile) does not hold a token of the form ferryd generates (fy_ and 43 base64url characters): remove it, and ferryd generates a new one")
            }
        }
    }

    /// The shape of ``TokenStore/generateToken()``: `fy_` and 32 random bytes in unpadded
    /// base64url.
    static func isGeneratedToken(_ token: String) -> Bool {
        let body = token.utf8.dropFirst(3)
        return token.hasPrefix("fy_") && body.count == 43 && body.allSatisfy { byte in
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
        }
    }

    private static func status(of path: String) -> stat? {
        var info = stat()
        return stat(path, &info) == 0 ? info : nil
    }

    private static func checkPrivateFile(_ path: String, _ info: stat, what: String) throws {
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw StartupFailure(message: "the \(what) \(path) is not a regular file: remove it, and ferryd generates a new one")
        }
        try checkPrivate(path, info, what: what, fix: "chmod 600 \(path)")
    }

    private static func checkPrivate(_ path: String, _ info: stat, what: String, fix: String) throws {
        guard info.st_uid == geteuid() else {
            throw StartupFailure(message: "the \(what) \(path) belongs to uid \(info.st_uid), not to this user (uid \(geteuid())): chown it to this user or choose another --state-dir")
        }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw StartupFailure(message: "the \(what) \(path) is accessible by group or others (mode \(String(mode, radix: 8))): \(fix)")
        }
    }

    private static func loadKeyPair(certificateFile: String, keyFile: String) throws -> ([NIOSSLCertificate], NIOSSLPrivateKey) {
        let chain = try readPEM(certificateFile, what: "TLS certificate") { try NIOSSLCertificate.fromPEMFile($0) }
        guard !chain.isEmpty else { throw StartupFailure(message: "the TLS certificate file \(certificateFile) holds no PEM certificate") }
        let key = try readPEM(keyFile, what: "TLS key") { try NIOSSLPrivateKey(file: $0, format: .pem) }
        return (chain, key)
    }

    private static func readPEM<T>(_ path: String, what: String, _ read: (String) throws -> T) throws -> T {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw StartupFailure(message: "cannot read the \(what) file \(path)")
        }
        do {
            return try read(path)
        } catch {
            throw StartupFailure(message: "the \(what) file \(path) is not valid PEM: \(error)")
        }
    }

    private static func createPrivateDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw StartupFailure(message: "cannot create the state directory \(path): \(error.localizedDescription)")
        }
    }

    /// Writes a file only its owner can read, creating it with that mode (no window in which
    /// it is readable by others).
    static func writePrivateFile(_ path: String, contents: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StartupFailure(message: "cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(contents.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw StartupFailure(message: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}

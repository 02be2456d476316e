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

    /// Loads configured credentials and generates the missing ones into the state directory.
    ///
    /// - Parameter defaultDirectory: where generated credentials go without a configured
    ///   state directory (the embedded cluster's own directory, so even SIGKILL leaves no
    ///   key behind); `nil` means a fresh temporary directory.
    static func resolve(_ configuration: ServerConfiguration, defaultDirectory: String?, logger: Logger) throws -> ServerCredentials {
        let needsCertificate = configuration.tlsCertificateFile == nil
        let needsTokens = configuration.tokensFile == nil && (configuration.tokensText ?? "").isEmpty
        if (configuration.tlsCertificateFile == nil) != (configuration.tlsKeyFile == nil) {
            throw StartupFailure(message: "a TLS certificate needs its key and a key its certificate: set both --tls-cert and --tls-key (FERRY_TLS_CERT, FERRY_TLS_KEY), or neither for a self-signed one")
        }

        var temporaryDirectory: String?
        var directory = configuration.stateDirectory ?? defaultDirectory
        if (needsCertificate || needsTokens) && directory == nil {
            var template = Array((FileManager.default.temporaryDirectory.path + "/ferryd-XXXXXX").utf8CString)
            guard let made = mkdtemp(&template) else {
                throw StartupFailure(message: "cannot create a directory for generated credentials: \(String(cString: strerror(errno)))")
            }
            directory = String(cString: made)
            temporaryDirectory = directory
        }
        do {
            if needsCertificate || needsTokens, let directory {
                try createPrivateDirectory(directory)
            }

            let certificateFile: String
            let keyFile: String
            if let configured = configuration.tlsCertificateFile, let key = configuration.tlsKeyFile {
                (certificateFile, keyFile) = (configured, key)
            } else {
                let directory = directory!
                (certificateFile, keyFile) = (directory + "/cert.pem", directory + "/key.pem")
                if FileManager.default.fileExists(atPath: certificateFile), FileManager.default.fileExists(atPath: keyFile) {
                    logger.notice("serving the self-signed TLS certificate kept in the state directory", metadata: ["certificate": "\(certificateFile)"])
                } else {
                    _ = try SelfSignedCertificate.generate().write(to: directory)
                    logger.notice("generated a self-signed TLS certificate; clients trust it with --ca-file", metadata: ["certificate": "\(certificateFile)"])
                }
            }
            let certificateChain = try readPEM(certificateFile, what: "TLS certificate") { try NIOSSLCertificate.fromPEMFile($0) }
            guard !certificateChain.isEmpty else { throw StartupFailure(message: "the TLS certificate file \(certificateFile) holds no PEM certificate") }
            let privateKey = try readPEM(keyFile, what: "TLS key") { try NIOSSLPrivateKey(file: $0, format: .pem) }
            var clientCertificateAuthorities: [NIOSSLCertificate]?
            if let caFile = configuration.tlsClientCAFile {
                let authorities = try readPEM(caFile, what: "client CA") { try NIOSSLCertificate.fromPEMFile($0) }
                guard !authorities.isEmpty else { throw StartupFailure(message: "the client CA file \(caFile) holds no PEM certificate") }
                clientCertificateAuthorities = authorities
            }

            var tokens = TokenStore()
            var adminTokenFile: String?
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
            if needsTokens, let directory {
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
                certificateChain: certificateChain, privateKey: privateKey,
                clientCertificateAuthorities: clientCertificateAuthorities, tokens: tokens,
                certificateFile: certificateFile, adminTokenFile: adminTokenFile,
                temporaryDirectory: temporaryDirectory)
        } catch {
            if let temporaryDirectory { try? FileManager.default.removeItem(atPath: temporaryDirectory) }
            throw error
        }
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

import FerryRuntime
import Foundation

/// Where the system's PostgreSQL server programs are.
public struct PostgresBinaries: Sendable {
    public let directory: String

    public var initdb: String { directory + "/initdb" }
    public var pgCtl: String { directory + "/pg_ctl" }
    public var createdb: String { directory + "/createdb" }

    /// Finds the binaries: `FERRY_PG_BIN`, else the newest `/usr/lib/postgresql/N/bin`
    /// (Debian's layout, which keeps them off PATH), else the directory of `initdb` on PATH.
    public static func locate(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> PostgresBinaries {
        let fileManager = FileManager.default
        if let explicit = environment["FERRY_PG_BIN"], !explicit.isEmpty {
            guard fileManager.isExecutableFile(atPath: explicit + "/initdb") else {
                throw SystemProcess.Failure(message: "FERRY_PG_BIN=\(explicit) has no initdb")
            }
            return PostgresBinaries(directory: explicit)
        }
        let debianRoot = "/usr/lib/postgresql"
        let versions = ((try? fileManager.contentsOfDirectory(atPath: debianRoot)) ?? [])
            .compactMap(Int.init).sorted(by: >)
        for version in versions where fileManager.isExecutableFile(atPath: "\(debianRoot)/\(version)/bin/initdb") {
            return PostgresBinaries(directory: "\(debianRoot)/\(version)/bin")
        }
        for entry in (environment["PATH"] ?? "").split(separator: ":") {
            let candidate = String(entry) + "/initdb"
            if fileManager.isExecutableFile(atPath: candidate) {
                let resolved = URL(fileURLWithPath: candidate).resolvingSymlinksInPath().deletingLastPathComponent().path
                return PostgresBinaries(directory: resolved)
            }
        }
        throw SystemProcess.Failure(message: "no PostgreSQL server binaries found (install the postgresql package, or set FERRY_PG_BIN to the directory holding initdb and pg_ctl)")
    }
}

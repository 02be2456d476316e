import EmbeddedPostgres
import FerryRuntime
import Foundation

/// Runs the built `ferryd` (and `ferry`) binaries as real child processes.
public enum FerryBinaries {
    /// The directory holding the built products: beside the test bundle, or `FERRY_BIN_DIR`.
    public static var directory: String {
        if let explicit = ProcessInfo.processInfo.environment["FERRY_BIN_DIR"] { return explicit }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    }

    public static var ferryd: String { directory + "/ferryd" }
    /// ferryd with the test-only job kinds of `Tests/FerrydTestServer`.
    public static var ferrydTest: String { directory + "/ferryd-test" }
    public static var ferry: String { directory + "/ferry" }
}

/// A finished child process: its exit status and everything it wrote (stdout and stderr).
public struct ProcessResult: Sendable {
    public var status: Int32
    public var output: String
    /// Non-empty output lines.
    public var lines: [String] { output.split(separator: "\n").map(String.init) }
}

/// A started child process whose output goes to a temporary file.
public final class RunningProcess: Sendable {
    public let child: ChildProcess
    public let outputFile: String

    init(child: ChildProcess, outputFile: String) {
        self.child = child
        self.outputFile = outputFile
    }

    public var output: String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }

    /// Waits for exit, killing the process if it outlives `timeout`.
    public func finish(timeout: Duration = .seconds(120)) async -> ProcessResult {
        let status = await withTaskGroup(of: Int32?.self) { group in
            group.addTask { await self.child.wait() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            if let first = await group.next(), let status = first {
                group.cancelAll()
                return status
            }
            child.signal(SIGKILL)
            let status = await child.wait()
            group.cancelAll()
            return status
        }
        let result = ProcessResult(status: status, output: output)
        try? FileManager.default.removeItem(atPath: outputFile)
        return result
    }

    /// Starts `arguments` with `environment` added to this process's environment.
    public static func start(_ arguments: [String], environment: [String: String] = [:]) throws -> RunningProcess {
        let outputFile = FileManager.default.temporaryDirectory.path + "/ferry-test-out-\(UUID().uuidString)"
        var merged = ProcessInfo.processInfo.environment
        // Keep configuration from the developer's shell out of the child.
        for key in merged.keys where key.hasPrefix("FERRY_") && key != "FERRY_PG_BIN" { merged[key] = nil }
        merged.merge(environment) { $1 }
        let child = try SystemProcess.launch(arguments, environment: merged, logFile: outputFile)
        return RunningProcess(child: child, outputFile: outputFile)
    }

    /// Runs `arguments` to completion.
    public static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(120)) async throws -> ProcessResult {
        try await start(arguments, environment: environment).finish(timeout: timeout)
    }
}

/// Runs several commands so that they begin at (nearly) the same instant, and returns their
/// results. Each waits in a shell that says it is ready (a file of its own) and then polls
/// for a gate file every 5 ms; the gate is created once every shell said it is ready.
public func runTogether(_ commands: [[String]], environment: [String: String] = [:], timeout: Duration = .seconds(120)) async throws -> [ProcessResult] {
    let gate = FileManager.default.temporaryDirectory.path + "/ferry-gate-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: gate) }
    let waiting = #": > "$0.ready.$1"; while [ ! -e "$0" ]; do sleep 0.005; done; shift; exec "$@""#
    let processes = try commands.enumerated().map { index, command in
        try RunningProcess.start(["/bin/sh", "-c", waiting, gate, String(index)] + command, environment: environment)
    }
    defer { for index in commands.indices { try? FileManager.default.removeItem(atPath: "\(gate).ready.\(index)") } }
    // Open the gate once every shell is in its polling loop (a busy machine may take a while).
    let deadline = ContinuousClock.now + .seconds(60)
    while !commands.indices.allSatisfy({ FileManager.default.fileExists(atPath: "\(gate).ready.\($0)") }), ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(5))
    }
    _ = FileManager.default.createFile(atPath: gate, contents: nil)
    var results: [ProcessResult] = []
    for process in processes { results.append(await process.finish(timeout: timeout)) }
    return results
}

/// A `ferryd serve` child process that has written its ready file.
public struct ServingFerryd: Sendable {
    public let process: RunningProcess
    /// The ready file's fields: pid, address, opsURL, database, caFile, tokenFile, embeddedDirectory.
    public let ready: [String: String]
    /// A private directory for this server's files (ready file, embedded cluster).
    public let scratch: String

    public var address: String { ready["address"] ?? "" }
    public var host: String { String(address[..<(address.lastIndex(of: ":") ?? address.endIndex)]) }
    public var port: Int { Int(address[address.index(after: address.lastIndex(of: ":") ?? address.startIndex)...]) ?? 0 }

    /// Starts `ferryd serve` on free ports (RPC and ops) with `arguments` added, and waits until
    /// it is serving. Throws with the process output if it exits or is not ready within 60 s.
    public static func start(_ arguments: [String] = [], environment: [String: String] = [:], binary: String = FerryBinaries.ferryd) async throws -> ServingFerryd {
        let scratch = FileManager.default.temporaryDirectory.path + "/ferryd-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let readyFile = scratch + "/ready.json"
        let process = try RunningProcess.start([
            binary, "serve", "--listen", "127.0.0.1:0", "--ops-address", "127.0.0.1:0",
            "--ready-file", readyFile, "--embedded-dir", scratch,
        ] + arguments, environment: environment)
        for _ in 0..<600 {
            if let data = FileManager.default.contents(atPath: readyFile),
               let ready = try? JSONSerialization.jsonObject(with: data) as? [String: String] {
                return ServingFerryd(process: process, ready: ready, scratch: scratch)
            }
            guard process.child.isRunning else { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        process.child.signal(SIGKILL)
        let result = await process.finish()
        try? FileManager.default.removeItem(atPath: scratch)
        throw SystemProcess.Failure(message: "ferryd did not become ready: \(result.output)")
    }

    /// Starts a server, runs `body`, and stops it whatever happens (stopping twice is
    /// harmless, so `body` may stop it itself to look at how it ended).
    public static func with<T: Sendable>(
        _ arguments: [String] = [], environment: [String: String] = [:], binary: String = FerryBinaries.ferryd,
        _ body: (ServingFerryd) async throws -> T
    ) async throws -> T {
        let server = try await start(arguments, environment: environment, binary: binary)
        do {
            let result = try await body(server)
            _ = await server.stop()
            return result
        } catch {
            _ = await server.stop()
            throw error
        }
    }

    /// Sends SIGTERM and waits for the exit; removes the scratch directory.
    public func stop(timeout: Duration = .seconds(60)) async -> ProcessResult {
        process.child.signal(SIGTERM)
        let result = await process.finish(timeout: timeout)
        try? FileManager.default.removeItem(atPath: scratch)
        return result
    }
}

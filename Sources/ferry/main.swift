import ArgumentParser
import FerryCore

/// `ferry`: the client CLI. For now it only knows its version; the job commands (start,
/// rerun, watch, …) arrive with the RPC protocol.
struct Ferry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Client for ferryd. Job commands are not implemented yet; this build only reports its version.",
        version: FerryVersion.current)

    func run() throws {
        print("ferry \(FerryVersion.current)")
    }
}

Ferry.main()

import ArgumentParser
import FerryCore
import FerryProtocol
import Foundation

/// `ferry`: the client CLI of ferryd.
struct Ferry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Client for ferryd: checks health and benchmarks the RPC layer and the job engine (job commands are not in this build).",
        version: FerryVersion.current,
        subcommands: [Health.self, Bench.self])
}

@main
enum FerryMain {
    /// Parses and runs a command. A call that fails prints `ferry: error: CODE: message` and
    /// exits 1; usage errors exit 64 as argument-parser does.
    static func main() async {
        do {
            var command = try await Ferry.asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as RPCError {
            FileHandle.standardError.write(Data("ferry: error: \(error)\n".utf8))
            exit(1)
        } catch let error as CLIError {
            FileHandle.standardError.write(Data("ferry: error: \(error.message)\n".utf8))
            exit(1)
        } catch {
            Ferry.exit(withError: error)
        }
    }
}

/// A failure the user can act on, printed as one line.
struct CLIError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

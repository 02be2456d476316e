import ArgumentParser
import ControlDatabase
import EmbeddedPostgres
import FerryRuntime
import Foundation
import FerryServer
import Logging
import Executors
import Synchronization

/// The `ferryd` command line, shared by the `ferryd` executable and test builds that add
/// job kinds of their own.
public enum FerrydMain {
    /// The job kinds `serve` runs, and a test build's adjustments of the configuration.
    static let kinds = Mutex(JobKinds())
    static let adjust = Mutex<(@Sendable (inout ServerConfiguration) -> Void)?>(nil)

    /// Parses and runs a command. Start-up failures the user can act on (bad configuration,
    /// an unreachable or refusing database, refused migrations) print as one line,
    /// `ferryd: error: …`, with exit status 1 and no stack trace.
    ///
    /// - Parameters:
    ///   - kinds: the job kinds this build runs.
    ///   - adjust: applied to `serve`'s configuration after the command line (test builds'
    ///     hooks); nil in `ferryd`.
    public static func main(kinds: JobKinds, adjust: (@Sendable (inout ServerConfiguration) -> Void)? = nil) async {
        Self.kinds.withLock { $0 = kinds }
        Self.adjust.withLock { $0 = adjust }
        // Logs go to stderr; stdout is kept for command output. The format is read from the
        // raw arguments and environment because the logging system must be set up before
        // parsing (which validates --log-format and FERRY_LOG_FORMAT, naming a bad value).
        switch LogFormat.requested(arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment) {
        case .text: LoggingSystem.bootstrap { label in StreamLogHandler.standardError(label: label) }
        case .json: LoggingSystem.bootstrap { label in JSONLogHandler.standardError(label: label) }
        }
        do {
            var command = try await Ferryd.asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch where isUserFacing(error) {
            FileHandle.standardError.write(Data("ferryd: error: \(error)\n".utf8))
            exit(1)
        } catch {
            Ferryd.exit(withError: error)
        }
    }

    static func isUserFacing(_ error: any Error) -> Bool {
        error is StartupError || error is DatabaseError || error is MigrationError
            || error is Migration.DefinitionError || error is DatabaseURL.ParseError || error is SystemProcess.Failure
            || error is StartupFailure
    }
}

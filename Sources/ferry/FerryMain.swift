import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation

/// `ferry`: the client CLI of ferryd.
struct Ferry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Start, watch and manage Ferry's tenant-migration jobs (clone, export, import, instance replace).",
        discussion: """
        Connection settings come from flags, else FERRY_* variables, else the current
        context of the config file (`ferry config`), else 127.0.0.1:7443.

        Exit codes:
          0   success (for a watch: the job SUCCEEDED)
          1   any other error
          2   the job FAILED
          3   the job was CANCELLED
          4   not found
          5   unauthenticated or permission denied
          6   ferryd unavailable (cannot connect, UNAVAILABLE, deadline exceeded)
          7   refused by ferryd (invalid argument, failed precondition, already exists, at capacity)
          64  usage error

        Examples:
          ferry config set-context prod --address ferry-a:7443 --address ferry-b:7443 --ca-file ca.pem --token-file ops.token --use
          ferry start clone --from eu-1/acme --to eu-2/acme --watch
          ferry list --status running
        """,
        version: FerryVersion.current,
        subcommands: [
            Start.self, Rerun.self, Watch.self, Get.self, List.self, Cancel.self,
            Instances.self, Tenants.self, Artifacts.self, Config.self, Health.self, Completion.self, Bench.self,
        ])
}

/// The documented exit codes.
enum ExitStatus: Int32 {
    case success = 0
    case failure = 1
    case jobFailed = 2
    case jobCancelled = 3
    case notFound = 4
    case denied = 5
    case unavailable = 6
    case refused = 7
    case usage = 64

    /// The exit status for a call that ended with `code`.
    init(_ code: StatusCode) {
        switch code {
        case .ok: self = .success
        case .notFound: self = .notFound
        case .unauthenticated, .permissionDenied: self = .denied
        case .unavailable, .deadlineExceeded: self = .unavailable
        case .invalidArgument, .failedPrecondition, .alreadyExists, .resourceExhausted, .outOfRange: self = .refused
        default: self = .failure
        }
    }

    /// The exit status of a job that reached `status`.
    init(job status: JobStatus) {
        switch status {
        case .succeeded: self = .success
        case .failed: self = .jobFailed
        case .cancelled: self = .jobCancelled
        default: self = .failure
        }
    }
}

@main
enum FerryMain {
    /// Parses and runs a command. Failures print `ferry: error: …` (and a hint when there is
    /// something to do) on stderr and exit with the documented code.
    static func main() async {
        do {
            var command = try await Ferry.asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as RPCError {
            fail("\(error)", hint: hint(for: error), status: ExitStatus(error.code))
        } catch let error as CLIError {
            fail(error.message, hint: nil, status: error.status)
        } catch let exit as ExitCode {
            Foundation.exit(exit.rawValue)
        } catch {
            Ferry.exit(withError: error)
        }
    }

    static func fail(_ message: String, hint: String?, status: ExitStatus) -> Never {
        var text = "ferry: error: \(message)\n"
        if let hint { text += "hint: \(hint)\n" }
        FileHandle.standardError.write(Data(text.utf8))
        exit(status.rawValue)
    }

    /// What the user can do about a failed call, when the code says it.
    static func hint(for error: RPCError) -> String? {
        switch error.code {
        case .unavailable where error.message.hasPrefix("cannot reach"):
            return "is ferryd running there? Name its address with --address, FERRY_ADDRESS or a context (ferry config set-context NAME --address HOST:PORT --use)"
        case .unauthenticated:
            return "give a token with --token-file, FERRY_TOKEN_FILE, FERRY_TOKEN or a context's token file (ferryd token create makes one)"
        case .permissionDenied:
            return "the token's role is too low for this command; ask for a token with a higher role"
        case .resourceExhausted:
            if case .object(let details)? = error.details, case .array(let running)? = details["runningJobIds"] {
                let ids = running.compactMap { if case .string(let id) = $0 { id } else { nil } }
                return "in the way: \(ids.joined(separator: ", ")); add --queue to wait in line instead"
            }
            return "add --queue to wait in line instead"
        default:
            return nil
        }
    }
}

/// A failure the user can act on, printed as one line, with its exit status.
struct CLIError: Error {
    var message: String
    var status: ExitStatus

    init(_ message: String, status: ExitStatus = .failure) {
        self.message = message
        self.status = status
    }

    /// A wrong or missing setting: exit 64.
    static func usage(_ message: String) -> CLIError { CLIError(message, status: .usage) }
}

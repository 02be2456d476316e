import ArgumentParser
import FerryClient
import FerryProtocol

/// `ferry health`: Health/Check. Prints the status; exits 0 only when SERVING.
struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask ferryd whether it is serving (Health/Check; no token needed). Exits 0 only when SERVING.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("timeout"), help: ArgumentHelp("Seconds to wait for the answer. Default 5.", valueName: "seconds"))
    var timeout: Double = 5

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let response = try await client.check(timeout: .milliseconds(Int(timeout * 1000)))
        let status = response.status
        print(status.name)
        if status != .serving { throw ExitCode(1) }
    }
}

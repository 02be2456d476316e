import ArgumentParser
import FerryClient
import FerryProtocol

/// `ferry health`: Health/Check. Prints the status; exits 0 only when SERVING.
struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask ferryd whether it is serving (Health/Check; no token needed). Exits 0 only when SERVING.",
        discussion: """
        Examples:
          ferry health
          ferry health --address 127.0.0.1:7443 --ca-file cert.pem
        """)

    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let response = try await client.check(timeout: connection.callTimeout)
        print(response.status.name)
        if response.status != .serving { throw ExitCode(1) }
    }
}

/// `ferry completion SHELL`: the completion script argument-parser generates.
struct Completion: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a shell completion script (bash, zsh or fish).",
        discussion: """
        Examples:
          ferry completion bash > /etc/bash_completion.d/ferry
          ferry completion zsh > "${fpath[1]}/_ferry"
          ferry completion fish > ~/.config/fish/completions/ferry.fish
        """)

    @Argument(help: "bash, zsh or fish.")
    var shell: String

    func run() throws {
        guard let kind = CompletionShell(rawValue: shell) else {
            throw CLIError.usage("unknown shell '\(shell)': expected bash, zsh or fish")
        }
        print(Ferry.completionScript(for: kind))
    }
}

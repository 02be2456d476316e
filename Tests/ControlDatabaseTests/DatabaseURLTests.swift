import Testing
@testable import ControlDatabase

@Suite struct DatabaseURLTests {
    @Test func parsesAFullURL() throws {
        let url = try DatabaseURL(parsing: "postgresql://app%40x:p%3Ass%2Fw@db.example:6432/control?sslmode=require&application_name=ferryd&connect_timeout=3")
        #expect(url.user == "app@x")
        #expect(url.password == "p:ss/w")
        #expect(url.host == "db.example")
        #expect(url.port == 6432)
        #expect(url.database == "control")
        #expect(url.sslMode == .require)
        #expect(url.applicationName == "ferryd")
        #expect(url.connectTimeout == 3)
    }

    @Test func defaultsLikeLibpq() throws {
        let url = try DatabaseURL(parsing: "postgres://ferry@localhost")
        #expect(url.port == 5432)
        #expect(url.database == "ferry")
        #expect(url.sslMode == .prefer)
        #expect(url.password == nil)
    }

    @Test(arguments: ["p@ss", "p/ss", "p?ss", "p#ss", "p:ss"])
    func unescapedPasswordCharactersNeverEchoThePassword(password: String) {
        do {
            let url = try DatabaseURL(parsing: "postgres://u:\(password)word@host:5432/db")
            #expect(!url.description.contains(password))
        } catch {
            #expect(!error.message.contains(password + "word"), "\(error.message)")
        }
    }

    /// An unescaped '@' then '/' puts the password's tail in the path, which is not quoted.
    @Test func aPasswordTailInThePathIsNotEchoed() {
        let error = #expect(throws: DatabaseURL.ParseError.self) {
            try DatabaseURL(parsing: "postgres://u:p@ss/secretword@host:5432/db")
        }
        #expect(error?.message.contains("secretword") == false, "\(error?.message ?? "")")
        #expect(error?.message.contains("%40") == true)
    }

    @Test func aPasswordWithAnUnquotedSpaceIsNotEchoed() {
        do {
            let url = try DatabaseURL(parsingConnectionString: "host=h user=u password=correct horse dbname=d")
            Issue.record("accepted: \(url)")
        } catch {
            #expect(!error.message.contains("horse") && !error.message.contains("correct"), "\(error.message)")
            #expect(error.message.contains("after password=") && error.message.contains("single quotes"), "\(error.message)")
        }
        // Quoted, it is the password.
        #expect((try? DatabaseURL(parsingConnectionString: "host=h user=u password='correct horse' dbname=d"))?.password == "correct horse")
    }

    @Test func ipv6Host() throws {
        let url = try DatabaseURL(parsing: "postgres://u:p@[::1]:5433/d")
        #expect(url.host == "::1")
        #expect(url.endpoint == "[::1]:5433")
    }

    @Test func descriptionNeverShowsThePassword() throws {
        let url = try DatabaseURL(parsing: "postgres://u:topsecret@h:1/d")
        #expect(url.description == "postgres://u:***@h:1/d")
        #expect(!"\(url)".contains("topsecret"))
        // The secret form round-trips.
        #expect(try DatabaseURL(parsing: url.secretURLString) == url)
    }

    @Test(arguments: [
        ("", "the database URL is empty"),
        ("localhost:5432/db", "the database URL must start with postgres:// (expected postgres://user[:password]@host[:port]/database)"),
        ("mysql://u@h/db", "the database URL has scheme 'mysql'; expected postgres:// or postgresql://"),
        ("postgres://u:secret@h:99999/db", "the database URL has port '99999'; expected a number from 1 to 65535"),
        // Foundation's URL parser refuses a non-numeric port before we see it.
        ("postgres://u:secret@h:abc/db", "the database URL is not a valid URL (check for unescaped characters; escape '@', ':' and '/' in the password as %40, %3A and %2F)"),
        ("postgres://h/db", "the database URL names no user (expected postgres://user[:password]@host[:port]/database)"),
        ("postgres://u:secret@h/db?sslmode=maybe", "the database URL has sslmode 'maybe'; expected one of disable, prefer, require, verify-ca, verify-full"),
        ("postgres://u:secret@h/db?pool=1", "the database URL has unsupported parameter 'pool' (supported: sslmode, application_name, connect_timeout)"),
        ("postgres://u:secret@h/a/b", "the database URL's path must be a single database name, got 'a/b'"),
    ])
    func refusesMalformedURLsWithoutEchoingSecrets(text: String, message: String) {
        let error = #expect(throws: DatabaseURL.ParseError.self) {
            try DatabaseURL(parsing: text)
        }
        #expect(error?.message == message)
        #expect(error?.message.contains("secret") == false)
    }
}

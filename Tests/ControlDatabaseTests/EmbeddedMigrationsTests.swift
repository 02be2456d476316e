import Foundation
import Testing
@testable import ControlDatabase

/// The binary's built-in migrations must be exactly the files in `migrations/`.
@Suite struct EmbeddedMigrationsTests {
    @Test func builtInMigrationsMatchTheMigrationsDirectory() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let onDisk = try MigrationSet.load(directory: root.appendingPathComponent("migrations").path)
        let builtIn = try MigrationSet.builtIn()
        #expect(!builtIn.migrations.isEmpty)
        #expect(builtIn.migrations == onDisk.migrations, "run scripts/embed-migrations after changing migrations/")
    }

    @Test func migrationFileNamesAreChecked() {
        #expect(throws: Migration.DefinitionError.self) { try Migration(fileName: "initial.sql", sql: "") }
        #expect(throws: Migration.DefinitionError.self) { try Migration(fileName: "0000_zero.sql", sql: "") }
        #expect(throws: Migration.DefinitionError.self) { try Migration(fileName: "0001_.sql", sql: "") }
        #expect(throws: Migration.DefinitionError.self) {
            try MigrationSet([try Migration(fileName: "0001_a.sql", sql: ""), try Migration(fileName: "0001_b.sql", sql: "")])
        }
    }
}

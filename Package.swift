// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "ferry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ferryd", targets: ["ferryd"]),
        .executable(name: "ferry", targets: ["ferry"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // Shared by every executable: the version and small value types.
        .target(name: "FerryCore"),

        // Ferry's control database: DSNs, connections, and the migration runner.
        .target(
            name: "ControlDatabase",
            dependencies: [
                "FerryCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),

        // A throwaway PostgreSQL cluster made from the system's binaries:
        // the embedded default of `ferryd serve`, and the tests' real server.
        .target(
            name: "EmbeddedPostgres",
            dependencies: [
                "FerryCore",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The server process: configuration, start-up, ops endpoint (health, metrics), shutdown.
        .target(
            name: "FerryServer",
            dependencies: [
                "FerryCore",
                "ControlDatabase",
                "EmbeddedPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        .executableTarget(
            name: "ferryd",
            dependencies: [
                "FerryServer",
                "ControlDatabase",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ferry",
            dependencies: [
                "FerryCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Test-only helpers: a shared throwaway cluster, PgBouncer, and ferryd child processes.
        .target(
            name: "FerryTestSupport",
            dependencies: [
                "ControlDatabase",
                "EmbeddedPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/FerryTestSupport"
        ),

        .testTarget(
            name: "ControlDatabaseTests",
            dependencies: ["ControlDatabase", "FerryTestSupport"]
        ),
        .testTarget(
            name: "EmbeddedPostgresTests",
            dependencies: ["EmbeddedPostgres", "ControlDatabase", "FerryTestSupport"]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["ferryd", "ferry", "FerryCore", "ControlDatabase", "EmbeddedPostgres", "FerryTestSupport"]
        ),
    ]
)

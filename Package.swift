// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "ferry",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "FerryClient", targets: ["FerryClient"]),
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
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // Shared by every executable: the version and small value types.
        .target(name: "FerryCore"),

        // General-purpose runtime pieces with nothing of Ferry's domain: child processes
        // (spawn, wait, signals, dropping root) and a doorbell for polling loops.
        .target(
            name: "FerryRuntime",
            dependencies: [
                "FerryCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // The ferry/1 wire protocol shared by server and client: frames and their codecs, the
        // JSON envelope reader, status codes, method descriptors, and the message types
        // generated from proto/ferry/v1 (scripts/generate-proto).
        .target(
            name: "FerryProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),

        // The RPC server: TLS, connections (a pure state machine and the I/O that performs it),
        // streams, limits, middleware (authentication, logging, metrics, deadlines), routing.
        .target(
            name: "FerryRPC",
            dependencies: [
                "FerryCore",
                "FerryProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),

        // The Swift client library: one TLS connection carrying many calls.
        .target(
            name: "FerryClient",
            dependencies: [
                "FerryCore",
                "FerryProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),

        // Ferry's control database: DSNs, connections, and the migration runner.
        .target(
            name: "ControlDatabase",
            dependencies: [
                "FerryCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),

        // A throwaway PostgreSQL cluster made from the system's binaries:
        // the embedded default of `ferryd serve`, and the tests' real server.
        .target(
            name: "EmbeddedPostgres",
            dependencies: [
                "FerryRuntime",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // libpq, the PostgreSQL client library (Debian's libpq-dev), for the data path: PostgresNIO
        // can COPY in but not out.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        // A thin Swift face over libpq: connections, simple statements, and the COPY pipe that
        // hands a source's COPY OUT buffers straight to a target's COPY IN, on a thread of its
        // own so no event loop ever blocks.
        .target(name: "LibPQ", dependencies: ["CLibPQ"]),

        // zstd (Debian's libzstd-dev), which compresses the data files of export archives.
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),

        // The artifact store (the shared directory export archives live in), the artifact
        // records in the control database, and the retention worker that deletes expired
        // artifacts and old events (never resume state).
        .target(
            name: "Artifacts",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                "FerryCore",
                "FerryRuntime",
                "ControlDatabase",
                "FerryProtocol",
                "JobStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Jobs in the control database: records, events, the NOTIFY listener.
        .target(
            name: "JobStore",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                "ControlDatabase",
                "FerryProtocol",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Admission under the per-instance cap, the FIFO queue, and the leader that rescues
        // jobs of dead replicas.
        .target(
            name: "Coordinator",
            dependencies: [
                "FerryCore",
                "FerryRuntime",
                "ControlDatabase",
                "FerryProtocol",
                "JobStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The bounded executor pool and the interface job kinds implement.
        .target(
            name: "Executors",
            dependencies: [
                "FerryCore",
                "FerryRuntime",
                "ControlDatabase",
                "FerryProtocol",
                "JobStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The data mover: the tenant schema reader and builder, the parallel COPY engine, the
        // verification checksums, the archive format, and the job kinds built from them.
        .target(
            name: "DataMover",
            dependencies: [
                "FerryCore",
                "LibPQ",
                "CZstd",
                "Artifacts",
                .product(name: "Crypto", package: "swift-crypto"),
                "ControlDatabase",
                "FerryProtocol",
                "JobStore",
                "Executors",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),

        // WatchJob's per-replica fan-out of job events.
        .target(
            name: "Watch",
            dependencies: [
                "FerryRuntime",
                "ControlDatabase",
                "FerryProtocol",
                "JobStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),

        // The server process: configuration, start-up, ops endpoint (health, metrics), shutdown.
        .target(
            name: "FerryServer",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                "FerryCore",
                "ControlDatabase",
                "EmbeddedPostgres",
                "FerryProtocol",
                "FerryRPC",
                "JobStore",
                "Coordinator",
                "Executors",
                "Watch",
                "Artifacts",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The ferryd command line (serve, migrate, token), shared by ferryd and test builds.
        .target(
            name: "FerrydCLI",
            dependencies: [
                "FerryCore",
                "FerryRuntime",
                "FerryServer",
                "FerryRPC",
                "FerryProtocol",
                "ControlDatabase",
                "EmbeddedPostgres",
                "Executors",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ferryd",
            dependencies: ["FerrydCLI", "Executors", "DataMover"]
        ),
        // ferryd with test-only job kinds (sleeping, failing, resumable), for the job-engine
        // tests that run real replicas; never shipped.
        .executableTarget(
            name: "ferryd-test",
            dependencies: ["FerrydCLI", "Executors", "DataMover", "FerryProtocol", "JobStore", "Coordinator", "FerryServer", .product(name: "PostgresNIO", package: "postgres-nio")],
            path: "Tests/FerrydTestServer"
        ),
        .executableTarget(
            name: "ferry",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                "FerryCore",
                "FerryClient",
                "FerryProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The client library's complete example (docs/client-library.md): start a clone, follow it, rerun it.
        .executableTarget(name: "clone-follower", dependencies: ["FerryClient", "FerryProtocol"], path: "Examples/CloneFollower"),

        // Test-only helpers: a shared throwaway cluster, PgBouncer, and ferryd child processes.
        .target(
            name: "FerryTestSupport",
            dependencies: [
                "ControlDatabase",
                "FerryRPC",
                "FerryRuntime",
                "EmbeddedPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/FerryTestSupport"
        ),

        .testTarget(
            name: "FerryProtocolTests",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf"), "FerryProtocol", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio")]
        ),
        .testTarget(
            name: "FerryRPCTests",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf"), "FerryRPC", "FerryClient", "FerryProtocol", "FerryTestSupport",
                           .product(name: "Logging", package: "swift-log"), .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                           .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
                           .product(name: "NIOTLS", package: "swift-nio")]
        ),
        .testTarget(
            name: "ControlDatabaseTests",
            dependencies: ["ControlDatabase", "FerryTestSupport", .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "Logging", package: "swift-log"), .product(name: "PostgresNIO", package: "postgres-nio")]
        ),
        .testTarget(
            name: "FerrydCLITests",
            dependencies: ["FerrydCLI", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "EmbeddedPostgresTests",
            dependencies: ["EmbeddedPostgres", "FerryRuntime", "ControlDatabase", "FerryTestSupport", .product(name: "PostgresNIO", package: "postgres-nio")]
        ),
        .testTarget(
            name: "JobEngineTests",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf"), "JobStore", "Watch", "Coordinator", "Executors", "ControlDatabase", "FerryProtocol", "FerryTestSupport",
                           .product(name: "Logging", package: "swift-log"), .product(name: "PostgresNIO", package: "postgres-nio")]
        ),
        .testTarget(
            name: "DataMoverTests",
            dependencies: ["DataMover", "LibPQ", "ControlDatabase", "EmbeddedPostgres", "FerryRuntime", "FerryTestSupport",
                           .product(name: "Logging", package: "swift-log"), .product(name: "PostgresNIO", package: "postgres-nio")]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf"), "ferryd", "ferry", "ferryd-test", "FerryCore", "FerryRuntime", "FerryServer", "ControlDatabase", "EmbeddedPostgres", "FerryTestSupport",
                           "FerryClient", "FerryProtocol", "FerryRPC",
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOTLS", package: "swift-nio"),
                           .product(name: "Logging", package: "swift-log"), .product(name: "PostgresNIO", package: "postgres-nio")]
        ),
    ]
)

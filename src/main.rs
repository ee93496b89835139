fn main() -> std::process::ExitCode {
    adanoise::cli::main()
}

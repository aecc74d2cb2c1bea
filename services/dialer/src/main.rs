use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ringer_dialer::Config::parse();
    ringer::telemetry::init(config.common.log_format);
    let shutdown = ringer::shutdown::on_signal();
    ringer_dialer::run(config, shutdown).await
}

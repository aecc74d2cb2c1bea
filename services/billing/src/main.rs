use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ringer_billing::Config::parse();
    ringer::telemetry::init(config.common.log_format);
    let shutdown = ringer::shutdown::on_signal();
    ringer_billing::run(config, shutdown).await
}

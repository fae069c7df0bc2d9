from vae_deploy.cli.app import main

main()

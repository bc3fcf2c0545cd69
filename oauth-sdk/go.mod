module github.com/dromos-labs/oauth-framework/oauth-sdk

go 1.22

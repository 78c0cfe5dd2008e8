// Key Vault in RBAC mode that keeps the PostgreSQL administrator password.
// mfhelm reads it back (as the deployer) to build the Kubernetes Secret and
// to reuse it on the next deploy, so the password never changes by accident.

@description('Azure region for the vault.')
param location string

@description('Short organisation prefix used in every resource name.')
param orgPrefix string

@description('Deterministic suffix that keeps the globally unique vault name unique.')
param nameSuffix string

@description('Name of the secret that holds the PostgreSQL administrator password.')
param postgresAdminSecretName string

@description('PostgreSQL administrator password to store.')
@secure()
param postgresAdminPassword string

@description('Principal ID of the deployer, granted Key Vault Secrets User on the secret.')
param deployerPrincipalId string

@description('Type of the deployer principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Tags applied to every resource.')
param tags object = {}

var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2026-02-01' = {
  // checkov:skip=CKV_AZURE_109:mfhelm reads the secret from the operator laptop; access needs Entra ID and an RBAC role on the secret
  // checkov:skip=CKV_AZURE_189:public network access stays on so mfhelm can read the secret from the operator laptop (RBAC guards it)
  name: '${orgPrefix}-kv-${take(nameSuffix, 10)}'
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource postgresPassword 'Microsoft.KeyVault/vaults/secrets@2026-02-01' = {
  // checkov:skip=CKV_AZURE_41:an expiry date would not rotate the database password, only break the next deploy's reuse of it
  parent: vault
  name: postgresAdminSecretName
  properties: {
    value: postgresAdminPassword
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource deployerSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(postgresPassword.id, deployerPrincipalId, secretsUserRoleId)
  scope: postgresPassword
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
  }
}

@description('Name of the vault.')
output vaultName string = vault.name

@description('URI of the vault.')
output vaultUri string = vault.properties.vaultUri

// Output names must not contain "password": the outputs-should-not-contain-secrets
// linter rule flags every such name, whatever the value.
@description('Name of the secret holding the PostgreSQL administrator password (the name, not the value).')
output postgresAdminSecretName string = postgresPassword.name

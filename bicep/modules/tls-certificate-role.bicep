// Read access for the application-routing add-on's managed identity to the one
// Key Vault certificate the entry point serves ([access] tls_certificate).
// The add-on syncs the certificate through the Secrets Store CSI driver with
// objectType `secret` (the secret Key Vault keeps beside every certificate,
// same name, holding the certificate and its private key), so what it needs
// is secrets/getSecret on that one secret: Key Vault Secrets User (read-only),
// assigned on the secret, not on the vault. The vault must use the Azure RBAC
// permission model. main.bicep deploys this module into the vault's resource
// group, which may be another one than the stack's.

@description('Name of the Key Vault that holds the certificate.')
param vaultName string

@description('Name of the certificate (and of the secret Key Vault keeps with it).')
param certificateName string

@description('Object ID of the application-routing add-on\'s managed identity.')
param principalId string

var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2026-02-01' existing = {
  name: vaultName
}

resource certificateSecret 'Microsoft.KeyVault/vaults/secrets@2026-02-01' existing = {
  parent: vault
  name: certificateName
}

resource appRoutingSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(certificateSecret.id, principalId, secretsUserRoleId)
  scope: certificateSecret
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
  }
}

@description('Resource ID of the role assignment.')
output roleAssignmentId string = appRoutingSecretsUser.id
